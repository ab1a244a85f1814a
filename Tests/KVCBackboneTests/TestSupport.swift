import Foundation
import XCTest
import KVCCore
import KVCGGUF
@testable import KVCBackbone

enum TestPaths {
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static func fixture(_ name: String) -> String { testsDirectory.appendingPathComponent("Fixtures/\(name)").path }

    static var assetsRoot: String {
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty { return env }
        return testsDirectory.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("assets").path
    }

    /// The real SmolLM2 GGUF, or a failure telling how to fetch it.
    static func realModelPath() throws -> String {
        let path = assetsRoot + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
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

/// The real model is loaded once for all tests (about a second).
enum SharedModel {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var cached: LlamaModel?

    static func get() throws -> LlamaModel {
        lock.lock(); defer { lock.unlock() }
        if let m = cached { return m }
        let m = try LlamaModel(path: TestPaths.realModelPath())
        cached = m
        return m
    }
}

/// Asserts that `body` throws a `KVCError` whose message contains every fragment.
func assertKVCError<T>(_ body: @autoclosure () throws -> T, contains fragments: [String],
                       file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected an error containing \(fragments)", file: file, line: line)
    } catch let e as KVCError {
        for f in fragments where !e.message.contains(f) {
            XCTFail("error \"\(e.message)\" does not contain \"\(f)\"", file: file, line: line)
        }
    } catch {
        XCTFail("expected KVCError, got \(error)", file: file, line: line)
    }
}

func argmax(_ x: ArraySlice<Float>) -> Int {
    var best = x.startIndex
    for i in x.indices where x[i] > x[best] { best = i }
    return best - x.startIndex
}
