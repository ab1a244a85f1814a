import Foundation
import KVCCore
import XCTest

/// The committed model directories under `Fixtures/` and scratch copies of them to damage.
enum Fixture {
    static func directory(_ name: String) throws -> String {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw KVCError("test fixtures are missing from the bundle")
        }
        return url.appendingPathComponent(name).path
    }

    /// A fresh copy of fixture `name` in a temporary directory (removed by the OS; names are unique per call).
    static func copy(_ name: String) throws -> String {
        let destination = NSTemporaryDirectory() + "kvc-smolvlm-\(name)-\(UUID().uuidString)"
        try FileManager.default.copyItem(atPath: try directory(name), toPath: destination)
        return destination
    }

    /// Rewrites `config.json` in `dir` through `edit`.
    static func editConfig(_ dir: String, file: String = "config.json", _ edit: (inout [String: Any]) -> Void) throws {
        let path = dir + "/" + file
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
    }

    /// Rewrites a safetensors file tensor by tensor: `transform(name, dtype, shape, values)` returns the entry to write
    /// (float dtypes as floats, I32 as rounded integers).
    static func rewrite(_ path: String,
                        _ transform: (String, SafetensorsDType, [Int], [Float]) -> (String, SafetensorsDType, [Int], [Float])) throws {
        let file = try SafetensorsFile(path: path)
        var writer = SafetensorsWriter(metadata: file.metadata)
        for info in file.tensors {
            let (name, dtype, shape, values) = transform(info.name, info.dtype, info.shape, try file.floats(info.name))
            if dtype == .i32 {
                try writer.add(name, int32s: values.map { Int32($0.rounded()) }, shape: shape)
            } else {
                try writer.add(name, floats: values, shape: shape, dtype: dtype)
            }
        }
        try writer.write(to: path)
    }
}

/// Asserts that `body` throws a `KVCError` whose message contains every one of `parts`.
func assertKVCError(_ parts: [String], file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected an error mentioning \(parts)", file: file, line: line)
    } catch let error as KVCError {
        for part in parts where !error.message.contains(part) {
            XCTFail("error '\(error.message)' does not mention '\(part)'", file: file, line: line)
        }
    } catch {
        XCTFail("expected KVCError, got \(error)", file: file, line: line)
    }
}
