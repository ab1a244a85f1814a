import XCTest
import KVCCore
@testable import KVCCollector

final class ShardSelectionTests: XCTestCase {
    func testParsesAndRejects() throws {
        let s = try ShardSelection(parsing: "1/3")
        XCTAssertEqual([0, 1, 2, 3, 4].filter(s.contains), [1, 4])
        for bad in ["3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"] {
            XCTAssertThrowsError(try ShardSelection(parsing: bad)) { XCTAssertTrue("\($0)".contains("i/n"), "\($0)") }
        }
    }
}
