import Foundation
import XCTest
@testable import KVCCore

final class SafetensorsTests: XCTestCase {
    private func tempPath(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "kvc-st-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/" + name
    }

    private func sample() throws -> SafetensorsWriter {
        var w = SafetensorsWriter(metadata: ["format": "pt", "note": "quote \" and\nnewline"])
        try w.add("weight", floats: (0..<12).map { Float($0) * 0.5 - 2 }, shape: [3, 4])
        try w.add("half", floats: [1, -2.5, 65504, 1e-4], shape: [2, 2], dtype: .f16)
        try w.add("brain", floats: [1, -2.5, 3.140625, 0], shape: [4], dtype: .bf16)
        try w.add("ids", int32s: [7, -1, 42], shape: [3])
        return w
    }

    func testRoundTrip() throws {
        let path = tempPath("roundtrip.safetensors")
        try sample().write(to: path)
        let f = try SafetensorsFile(path: path)
        XCTAssertEqual(f.names, ["weight", "half", "brain", "ids"])
        XCTAssertEqual(f.metadata["note"], "quote \" and\nnewline")
        XCTAssertEqual(try f.info("weight").shape, [3, 4])
        XCTAssertEqual(try f.floats("weight"), (0..<12).map { Float($0) * 0.5 - 2 })
        XCTAssertEqual(try f.floats("half"), [1, -2.5, 65504, Float(Float16(1e-4))])
        XCTAssertEqual(try f.floats("brain"), [1, -2.5, 3.140625, 0])
        XCTAssertEqual(try f.ints("ids"), [7, -1, 42])
        XCTAssertThrowsError(try f.floats("nope")) { XCTAssertTrue("\($0)".contains("no tensor named 'nope'")) }
        XCTAssertThrowsError(try f.floats("ids")) { XCTAssertTrue("\($0)".contains("expected F32")) }
    }

    /// The files must be readable by the reference ecosystem: parse with plain Python + numpy when available.
    func testReadableByNumpy() throws {
        let path = tempPath("numpy.safetensors")
        try sample().write(to: path)
        let script = """
        import json, struct, sys, numpy as np
        b = open(sys.argv[1], 'rb').read()
        n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+n]); d = b[8+n:]
        assert (8 + n) % 8 == 0
        dt = {'F32': '<f4', 'F16': '<f2', 'BF16': None, 'I32': '<i4'}
        out = {}
        for k, v in h.items():
            if k == '__metadata__': continue
            s, e = v['data_offsets']; raw = d[s:e]
            if v['dtype'] == 'BF16':
                a = (np.frombuffer(raw, '<u2').astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, dt[v['dtype']])
            out[k] = a.reshape(v['shape']).astype(np.float64).ravel().tolist()
        print(json.dumps(out))
        """
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        proc.arguments = ["python3", "-c", script, path]
        let pipe = Pipe()
        proc.standardOutput = pipe
        proc.standardError = FileHandle.nullDevice
        do { try proc.run() } catch { throw XCTSkip("python3 not available: \(error)") }
        proc.waitUntilExit()
        guard proc.terminationStatus == 0 else { throw XCTSkip("python3 with numpy not available") }
        let out = try JSONSerialization.jsonObject(with: pipe.fileHandleForReading.readDataToEndOfFile()) as! [String: [Double]]
        XCTAssertEqual(out["weight"]!.map(Float.init), (0..<12).map { Float($0) * 0.5 - 2 })
        XCTAssertEqual(out["half"]!.map(Float.init), [1, -2.5, 65504, Float(Float16(1e-4))])
        XCTAssertEqual(out["brain"]!.map(Float.init), [1, -2.5, 3.140625, 0])
        XCTAssertEqual(out["ids"]!, [7, -1, 42])
    }

    private func assertRejects(_ bytes: Data, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SafetensorsFile(data: bytes, path: "bad.safetensors"), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(fragment), "\(error) should mention '\(fragment)'", file: file, line: line)
            XCTAssertTrue("\(error)".contains("bad.safetensors"), "error names the file", file: file, line: line)
        }
    }

    private func file(header: String, data: Int = 0) -> Data {
        var d = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { d.append(contentsOf: $0) }
        d.append(contentsOf: Array(header.utf8))
        d.append(Data(count: data))
        return d
    }

    func testRejectsMalformedFiles() throws {
        assertRejects(Data([1, 2, 3]), "truncated")
        var huge = Data()
        withUnsafeBytes(of: UInt64.max.littleEndian) { huge.append(contentsOf: $0) }
        assertRejects(huge, "exceeds the limit")
        assertRejects(file(header: "{}").dropLast(1), "past the end")
        assertRejects(file(header: "[1,2]"), "not a JSON object")
        assertRejects(file(header: #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#, data: 3), "trailing bytes")
        assertRejects(file(header: #"{"a":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}}"#, data: 1), "unknown dtype 'F8'")
        assertRejects(file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 4), "past the data section")
        assertRejects(file(header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: 8), "needs 12 bytes")
        assertRejects(file(header: #"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: 4), "non-negative")
        assertRejects(file(header: #"{"a":{"dtype":"U8","shape":[4611686018427387904,4],"data_offsets":[0,4]}}"#, data: 4),
                      "larger than the file")
        assertRejects(file(header: #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                           data: 6), "overlapping")
        assertRejects(file(header: #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}}"#, data: 8), "data_offsets")
        assertRejects(file(header: #"{"__metadata__":{"k":1}}"#), "not a string")
    }

    func testWriterRejectsBadInput() {
        var w = SafetensorsWriter()
        XCTAssertThrowsError(try w.add("a", floats: [1, 2, 3], shape: [2, 2])) { XCTAssertTrue("\($0)".contains("'a'")) }
        XCTAssertNoThrow(try w.add("a", floats: [1], shape: [1]))
        XCTAssertThrowsError(try w.add("a", floats: [1], shape: [1])) { XCTAssertTrue("\($0)".contains("duplicate")) }
    }

    /// Seeded mutations of a valid file: every mutant either loads or fails with an error, never a crash.
    func testMutatedFilesNeverCrash() throws {
        let valid = try sample().serialize()
        var rng = SeededRandom(seed: 7)
        let iterations = Int(ProcessInfo.processInfo.environment["KVC_FUZZ_ITERATIONS"] ?? "") ?? 3000
        var loaded = 0, rejected = 0
        for _ in 0..<iterations {
            var bytes = [UInt8](valid)
            switch rng.nextInt(below: 3) {
            case 0:
                for _ in 0...rng.nextInt(below: 4) { bytes[rng.nextInt(below: bytes.count)] ^= UInt8(1 << rng.nextInt(below: 8)) }
            case 1:
                bytes.removeLast(rng.nextInt(below: bytes.count))
            default:
                bytes += (0..<rng.nextInt(below: 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
            if let f = try? SafetensorsFile(data: Data(bytes)) {
                loaded += 1
                for name in f.names { _ = try? f.floats(name); _ = try? f.ints(name) }
            } else {
                rejected += 1
            }
        }
        print("safetensors mutation fuzz: \(iterations) mutants, \(loaded) loaded, \(rejected) rejected, 0 crashes")
        XCTAssertEqual(loaded + rejected, iterations)
        XCTAssertGreaterThan(rejected, 0)
    }
}
