import XCTest
@testable import KVCCore

final class CoreTests: XCTestCase {
    func testSVDReconstructsMatrix() throws {
        var rng = SeededRandom(seed: 1)
        let m = 7, n = 5
        let a = (0..<(m * n)).map { _ in rng.nextNormal() }
        let (u, s, vt) = try LAPACK.svd(a, rows: m, cols: n)
        XCTAssertEqual(s.count, 5)
        for i in 0..<m {
            for j in 0..<n {
                var v: Float = 0
                for p in 0..<5 { v += u[i * 5 + p] * s[p] * vt[p * n + j] }
                XCTAssertEqual(v, a[i * n + j], accuracy: 1e-4)
            }
        }
        XCTAssertTrue(zip(s, s.dropFirst()).allSatisfy { $0 >= $1 }, "singular values descend")
    }

    func testAtomicWriteReplacesWholeFile() throws {
        let dir = NSTemporaryDirectory() + "kvc-atomic-\(getpid())"
        let path = dir + "/out.txt"
        try AtomicFile.write("first", to: path)
        try AtomicFile.write("second", to: path)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "second")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0 != "out.txt" }
        XCTAssertEqual(leftovers, [], "no temporary files remain")
    }

    func testSeededRandomIsDeterministic() {
        var a = SeededRandom(seed: 42), b = SeededRandom(seed: 42), c = SeededRandom(seed: 43)
        let xa = (0..<100).map { _ in a.nextNormal() }
        XCTAssertEqual(xa, (0..<100).map { _ in b.nextNormal() })
        XCTAssertNotEqual(xa, (0..<100).map { _ in c.nextNormal() })
        let mean = xa.reduce(0, +) / 100
        XCTAssertEqual(mean, 0, accuracy: 0.3)
    }
}

final class ChecksumTests: XCTestCase {
    func testXXH128KnownValuesAndSensitivity() throws {
        // Reference values from Python's independent `xxhash` package: xxhash.xxh3_128_hexdigest(b"...").
        XCTAssertEqual(Checksum.xxh128(Data()), "99aa06d3014798d86001c324468d497f")
        let a = Checksum.xxh128(Data("kvcapsule".utf8))
        XCTAssertEqual(a, "4d6f07c10718b1b4e503a242cd2bdee6")
        XCTAssertNotEqual(a, Checksum.xxh128(Data("kvcapsulf".utf8)))
    }
}

final class RecipeTests: XCTestCase {
    func testTypedReadsAndErrorsNameTheKey() throws {
        let r = try RecipeSection.parse("""
        kind: front-end
        seed: 3
        train:
          steps: 10
          lr: 0.001
          typo_key: 1
        """, file: "r.yaml")
        XCTAssertEqual(try r.string("kind", allowed: ["front-end", "capsule"]), "front-end")
        XCTAssertEqual(try r.int("seed", range: 0...100), 3)
        XCTAssertEqual(try r.int("epochs", default: 2, range: 1...10), 2)
        let t = try XCTUnwrap(r.section("train"))
        XCTAssertEqual(try t.int("steps", range: 1...100), 10)
        XCTAssertEqual(try t.double("lr", range: 0...1), 0.001)
        XCTAssertThrowsError(try t.finish()) {
            XCTAssertTrue("\($0)".contains("r.yaml") && "\($0)".contains("train.typo_key") && "\($0)".contains("accepts: lr, steps"), "\($0)")
        }
        XCTAssertNoThrow(try r.finish())
        XCTAssertThrowsError(try t.int("steps", range: 20...30)) { XCTAssertTrue("\($0)".contains("train.steps: expected an integer in 20...30, got '10'"), "\($0)") }
        XCTAssertThrowsError(try r.string("kind", allowed: ["capsule"])) { XCTAssertTrue("\($0)".contains("not one of capsule"), "\($0)") }
        XCTAssertThrowsError(try RecipeSection.parse("- a\n- b", file: "x.yaml")) { XCTAssertTrue("\($0)".contains("mapping"), "\($0)") }
        XCTAssertThrowsError(try RecipeSection.parse("a: [", file: "x.yaml")) { XCTAssertTrue("\($0)".contains("not valid YAML"), "\($0)") }
    }
}
