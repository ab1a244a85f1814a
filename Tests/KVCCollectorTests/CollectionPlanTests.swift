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

final class CollectionPlanTests: XCTestCase {
    func testPlanIsDeterministicAndCutIntoShards() throws {
        let data = try TestSupport.easyVQA()
        let a = try CollectionPlan.easyVQA(data, split: .train, seed: 1, limit: 50, samplesPerShard: 8)
        let b = try CollectionPlan.easyVQA(data, split: .train, seed: 1, limit: 50, samplesPerShard: 8)
        let c = try CollectionPlan.easyVQA(data, split: .train, seed: 2, limit: 50, samplesPerShard: 8)
        XCTAssertEqual(a.items, b.items)
        XCTAssertEqual(a.items.map(\.id), c.items.map(\.id), "the seed picks questions, not images")
        XCTAssertNotEqual(a.items.map(\.question), c.items.map(\.question))
        XCTAssertEqual(a.shardCount, 7)
        XCTAssertEqual(a.items(inShard: 6).map(\.index), [48, 49])
        // A shorter limit plans a prefix of the same items.
        let short = try CollectionPlan.easyVQA(data, split: .train, seed: 1, limit: 5, samplesPerShard: 8)
        XCTAssertEqual(short.items, Array(a.items.prefix(5)))
        // Every question asked is one of the image's questions, with its answer.
        let (questions, _) = try data.questions(.train)
        for item in a.items {
            XCTAssertTrue(questions.contains { $0.imageID == item.imageIDs[0] && $0.text == item.question && $0.answer == item.answer },
                          "\(item)")
        }
    }

    func testMultiImageItemsAskAboutEveryPosition() throws {
        let plan = try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, imagesPerPrompt: 3, limit: 60)
        XCTAssertEqual(plan.items.count, 60)
        XCTAssertEqual(Set(plan.items.map(\.targetImage)), [0, 1, 2])
        XCTAssertEqual(Set(plan.items.flatMap(\.imageIDs)).count, 180, "groups do not share images")
        XCTAssertTrue(plan.items.allSatisfy { $0.question.hasPrefix("In image \($0.targetImage + 1), ") })
        XCTAssertThrowsError(try CollectionPlan.easyVQA(TestSupport.easyVQA(), split: .train, imagesPerPrompt: 0))
    }
}
