import Foundation
import KVCCore
@testable import KVCVision
import XCTest

/// Seeded mutation fuzzing of the PNG and JPEG readers: bytes of real files are flipped, overwritten, truncated,
/// extended and spliced; every mutant must decode or throw a `KVCError`, never crash. `KVC_FUZZ_ITERATIONS` raises
/// the count (default kept small for CI), `KVC_FUZZ_SEED` changes the stream.
final class ImageFuzzTests: XCTestCase {
    func testMutatedImagesNeverCrash() throws {
        let env = ProcessInfo.processInfo.environment
        let iterations = Int(env["KVC_FUZZ_ITERATIONS"] ?? "") ?? 20_000
        var rng = SeededRandom(seed: UInt64(env["KVC_FUZZ_SEED"] ?? "") ?? 20261125)
        var seeds: [(String, [UInt8])] = []
        let fixtures = try TestSupport.fixtures
        for name in try FileManager.default.contentsOfDirectory(atPath: fixtures).sorted()
        where name.hasSuffix(".png") || name.hasSuffix(".jpg") {
            seeds.append((name, [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixtures + "/" + name)))))
        }
        if let root = try? TestSupport.easyVQARoot() {
            for id in [0, 1, 2] {
                let path = "\(root)/train/images/\(id).png"
                seeds.append(("easy-vqa-\(id).png", [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))))
            }
        }
        let pngSeeds = seeds.filter { $0.0.hasSuffix(".png") }, jpegSeeds = seeds.filter { $0.0.hasSuffix(".jpg") }
        XCTAssertGreaterThanOrEqual(pngSeeds.count, 8)
        XCTAssertGreaterThanOrEqual(jpegSeeds.count, 3)
        // Small limits keep a mutated header from asking for a large (legal) buffer, so memory stays bounded.
        let limits = ImageLimits(maxSide: 4096, maxPixels: 1 << 20)
        var decoded = [String: Int](), rejected = [String: Int]()
        let start = Date()
        for i in 0..<iterations {
            // Alternate formats so JPEG (fewer seed files) gets half of the mutants.
            let pool = i % 2 == 0 ? pngSeeds : jpegSeeds
            let (name, original) = pool[(i / 2) % pool.count]
            let mutant = mutate(original, rng: &rng)
            let format = name.hasSuffix(".png") ? "png" : "jpeg"
            do {
                let image = try Image.decode(Data(mutant), name: "mutant-\(i)", limits: limits)
                XCTAssertEqual(image.pixels.count, image.width * image.height * 3)
                decoded[format, default: 0] += 1
            } catch let error as KVCError {
                XCTAssertTrue(error.message.hasPrefix("mutant-\(i): "), error.message)
                rejected[format, default: 0] += 1
            }
        }
        let seconds = Date().timeIntervalSince(start)
        for format in ["png", "jpeg"] {
            print("image mutation fuzz (\(format)): \(decoded[format, default: 0] + rejected[format, default: 0]) mutants, "
                  + "\(decoded[format, default: 0]) decoded, \(rejected[format, default: 0]) rejected, 0 crashes")
        }
        print(String(format: "image mutation fuzz: %d mutants in %.2f s", iterations, seconds))
        XCTAssertGreaterThan(rejected["png", default: 0], 0)
        XCTAssertGreaterThan(rejected["jpeg", default: 0], 0)
    }
}

fileprivate func mutate(_ original: [UInt8], rng: inout SeededRandom) -> [UInt8] {
    var bytes = original
    // One to three mutations, most of them in the first kilobyte, where headers and tables live.
    for _ in 0...rng.nextInt(below: 3) {
        guard !bytes.isEmpty else { break }
        let hot = min(bytes.count, 1024)
        let at = rng.nextInt(below: 4) == 0 ? rng.nextInt(below: bytes.count) : rng.nextInt(below: hot)
        switch rng.nextInt(below: 6) {
        case 0:  // flip bits
            for _ in 0...rng.nextInt(below: 4) { bytes[rng.nextInt(below: bytes.count)] ^= UInt8(1 << rng.nextInt(below: 8)) }
        case 1:  // overwrite with an interesting value
            let values: [UInt8] = [0, 0xFF, 0x7F, 0x80, 1, 0xFE, 0xD8, 0xD9, 0xDA, 0xC0, 0xC2]
            bytes[at] = values[rng.nextInt(below: values.count)]
        case 2:  // truncate
            bytes.removeLast(rng.nextInt(below: bytes.count))
        case 3:  // extend with random bytes
            bytes += (0..<rng.nextInt(below: 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        case 4:  // duplicate a run (repeats chunks, markers)
            let length = min(rng.nextInt(below: 32) + 1, bytes.count - at)
            bytes.insert(contentsOf: bytes[at..<at + length], at: rng.nextInt(below: bytes.count))
        default:  // delete a run
            let length = min(rng.nextInt(below: 16) + 1, bytes.count - at)
            bytes.removeSubrange(at..<at + length)
        }
    }
    return bytes
}
