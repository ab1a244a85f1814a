import Foundation
import XCTest
@testable import KVCGGUF
import KVCCore

/// Paths to committed fixtures (made by scripts/reference/gguf_dump_reference.py) and to the real model.
enum TestPaths {
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static func fixture(_ name: String) -> String { testsDirectory.appendingPathComponent("Fixtures/\(name)").path }

    /// The real SmolLM2 GGUF: `$KVC_ASSETS/smollm2/...`, else the package's `assets/` directory.
    static func realModel() throws -> String {
        let root: String
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty {
            root = env
        } else {
            root = testsDirectory.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("assets").path
        }
        let path = root + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("real model missing at \(path): run scripts/setup.sh or set KVC_ASSETS")
            throw KVCError("missing asset \(path)")
        }
        return path
    }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture(name)))
        guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw KVCError("fixture \(name) is not a JSON object")
        }
        return obj
    }
}

/// Asserts that `body` throws a `KVCError` whose message contains every fragment; returns the message.
@discardableResult
func assertKVCError<T>(_ body: @autoclosure () throws -> T, contains fragments: [String],
                       file: StaticString = #filePath, line: UInt = #line) -> String? {
    do {
        _ = try body()
        XCTFail("expected an error containing \(fragments)", file: file, line: line)
        return nil
    } catch let e as KVCError {
        for f in fragments where !e.message.contains(f) {
            XCTFail("error \"\(e.message)\" does not contain \"\(f)\"", file: file, line: line)
        }
        return e.message
    } catch {
        XCTFail("expected KVCError, got \(error)", file: file, line: line)
        return nil
    }
}
