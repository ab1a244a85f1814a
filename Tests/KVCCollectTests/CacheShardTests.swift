import Foundation
import XCTest
import KVCCore
@testable import KVCCollect

final class CacheShardTests: XCTestCase {
    let layout = CacheLayout(layers: 2, kvHeads: 3, queryHeads: 9, headDim: 4)

    private func tempDir() -> String {
        let dir = NSTemporaryDirectory() + "kvc-collect-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    private func sample(_ id: String, n: Int, t: Int, seed: UInt64) -> CacheSample {
        var rng = SeededRandom(seed: seed)
        func halves(_ count: Int) -> [UInt16] { HalfConversion.floatToHalf((0..<count).map { _ in rng.nextNormal() }) }
        let kv = layout.layers * layout.kvHeads * n * layout.headDim
        return CacheSample(
            id: id, grids: [ImageGrid(start: 0, rows: 2, cols: n / 2)],
            visionPositions: (0..<n).map { Int32(5 + $0) }, textPositions: (0..<t).map { Int32(5 + n + $0) },
            keys: halves(kv), values: halves(kv), queries: halves(layout.layers * layout.queryHeads * t * layout.headDim),
            info: ["question": "what shape?", "answer": "circle"])
    }

    func testShardRoundTripAndManifest() throws {
        let dir = tempDir()
        let a = sample("train/0", n: 4, t: 3, seed: 1), b = sample("train/1", n: 6, t: 2, seed: 2)
        let c = sample("train/2", n: 4, t: 5, seed: 3)
        try CacheShard.write([a, b], skipped: [.init(id: "train/9", reason: "image unreadable")], fingerprint: "fp",
                             layout: layout, shardIndex: 0, to: dir + "/" + CacheShard.fileName(index: 0))
        try CacheShard.write([c], skipped: [], fingerprint: "fp", layout: layout, shardIndex: 1,
                             to: dir + "/" + CacheShard.fileName(index: 1))
        let manifest = try CacheManifest.build(directory: dir, source: ["task": "easy-vqa", "split": "train"])
        try manifest.write(directory: dir)
        XCTAssertEqual(manifest.sampleCount, 3)
        XCTAssertEqual(manifest.skipped, [.init(id: "train/9", reason: "image unreadable")])
        XCTAssertEqual(manifest.shards.map(\.samples), [2, 1])
        XCTAssertEqual(manifest.bytesPerSample, Double(a.byteCount + b.byteCount + c.byteCount) / 3, accuracy: 1e-9)

        let store = try CacheStore(directory: dir, verifyChecksums: true)
        var read: [CacheSample] = []
        try store.forEachSample { read.append($0) }
        XCTAssertEqual(read, [a, b, c])
    }

    func testRejectsForeignBackboneAndCorruption() throws {
        let dir = tempDir()
        try CacheShard.write([sample("x", n: 4, t: 1, seed: 1)], skipped: [], fingerprint: "fp-A", layout: layout,
                             shardIndex: 0, to: dir + "/" + CacheShard.fileName(index: 0))
        try CacheShard.write([sample("y", n: 4, t: 1, seed: 2)], skipped: [], fingerprint: "fp-B", layout: layout,
                             shardIndex: 1, to: dir + "/" + CacheShard.fileName(index: 1))
        XCTAssertThrowsError(try CacheManifest.build(directory: dir, source: [:])) {
            XCTAssertTrue("\($0)".contains("fingerprint"), "\($0)")
        }
        try FileManager.default.removeItem(atPath: dir + "/" + CacheShard.fileName(index: 1))
        try CacheManifest.build(directory: dir, source: [:]).write(directory: dir)
        // Change one byte of the shard: the checksum check names the file.
        let path = dir + "/" + CacheShard.fileName(index: 0)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 1] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try CacheStore(directory: dir, verifyChecksums: true)) {
            XCTAssertTrue("\($0)".contains("checksum") && "\($0)".contains("shard-00000"), "\($0)")
        }
    }

    func testSampleValidationNamesTheField() {
        var s = sample("bad", n: 4, t: 2, seed: 1)
        s.queries.removeLast()
        XCTAssertThrowsError(try s.validate(against: layout)) { XCTAssertTrue("\($0)".contains("queries hold"), "\($0)") }
        s = sample("bad", n: 4, t: 2, seed: 1)
        s.grids = [ImageGrid(start: 0, rows: 1, cols: 3)]
        XCTAssertThrowsError(try s.validate(against: layout)) { XCTAssertTrue("\($0)".contains("grids cover 3"), "\($0)") }
    }

    /// The shard layout is readable by plain numpy, with the values the Swift side stored.
    func testShardReadableByNumpy() throws {
        let dir = tempDir()
        let a = sample("train/0", n: 4, t: 3, seed: 11)
        let path = dir + "/" + CacheShard.fileName(index: 0)
        try CacheShard.write([a], skipped: [], fingerprint: "fp", layout: layout, shardIndex: 0, to: path)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../scripts/reference/read_cache_shard.py").standardized.path
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = ["python3", script, path]
        let pipe = Pipe()
        proc.standardOutput = pipe
        proc.standardError = FileHandle.nullDevice
        do { try proc.run() } catch { throw XCTSkip("python3 not available") }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        guard proc.terminationStatus == 0 else { throw XCTSkip("python3 with numpy not available") }
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: output) as? [String: Any])
        let s = try XCTUnwrap((json["samples"] as? [[String: Any]])?.first)
        XCTAssertEqual(s["keys_shape"] as? [Int], [2, 3, 4, 4])
        XCTAssertEqual(s["queries_shape"] as? [Int], [2, 9, 3, 4])
        let keys = HalfConversion.halfToFloat(a.keys), values = HalfConversion.halfToFloat(a.values)
        XCTAssertEqual(s["keys_sum"] as! Double, keys.reduce(0.0) { $0 + Double($1) }, accuracy: 1e-6)
        XCTAssertEqual(s["values_sum"] as! Double, values.reduce(0.0) { $0 + Double($1) }, accuracy: 1e-6)
        XCTAssertEqual(Float(s["key_last"] as! Double), keys.last!)
        XCTAssertEqual(Float(s["value_first"] as! Double), values.first!)
        XCTAssertEqual(s["vision_positions"] as? [Int], [5, 6, 7, 8])
    }
}
