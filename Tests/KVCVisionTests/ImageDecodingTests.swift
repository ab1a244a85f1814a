import Foundation
import KVCCore
@testable import KVCVision
import XCTest

final class ImageDecodingTests: XCTestCase {
    /// Every PNG colour type and the JPEG variants decode to the RGB that Pillow/pypng produce.
    func testFixturesMatchIndependentDecoder() throws {
        let reference = try TestSupport.reference()
        XCTAssertGreaterThanOrEqual(reference.files.count, 11)
        for (name, expected) in reference.files.sorted(by: { $0.key < $1.key }) {
            let image = try Image.load(path: TestSupport.fixture(name))
            XCTAssertEqual(image.width, expected.width, name)
            XCTAssertEqual(image.height, expected.height, name)
            XCTAssertEqual(image.channels, 3, name)
            let got = image.pixels.map(Int.init)
            XCTAssertEqual(got.count, expected.rgb.count, name)
            if name.hasSuffix(".jpg") {
                // libjpeg-turbo versions may round the IDCT/upsampling differently by a step or two.
                let diffs = zip(got, expected.rgb).map { abs($0 - $1) }
                let maxDiff = diffs.max() ?? 0
                let meanDiff = Double(diffs.reduce(0, +)) / Double(max(diffs.count, 1))
                XCTAssertLessThanOrEqual(maxDiff, 2, "\(name): max |diff| vs Pillow")
                XCTAssertLessThan(meanDiff, 0.5, "\(name): mean |diff| vs Pillow")
                print("\(name): max |diff| \(maxDiff), mean \(meanDiff) vs Pillow")
            } else {
                XCTAssertEqual(got, expected.rgb, "\(name): pixels differ from Pillow/pypng")
            }
        }
    }

    /// Shipped easy-VQA images decode to exactly the bytes Pillow decodes.
    func testEasyVQAImagesMatchPillow() throws {
        let root = try TestSupport.easyVQARoot()
        let reference = try TestSupport.reference()
        XCTAssertEqual(reference.easy_vqa.count, 4)
        for (key, expected) in reference.easy_vqa {
            let image = try Image.load(path: "\(root)/\(expected.split)/images/\(expected.id).png")
            XCTAssertEqual(image.width, expected.width, key)
            XCTAssertEqual(image.height, expected.height, key)
            XCTAssertEqual(image.pixels.reduce(0) { $0 + Int($1) }, expected.byte_sum, key)
            for s in expected.samples {
                XCTAssertEqual([Int(image[s[0], s[1], 0]), Int(image[s[0], s[1], 1]), Int(image[s[0], s[1], 2])],
                               Array(s[2...4]), "\(key) at (\(s[0]), \(s[1]))")
            }
            if let hex = expected.rgb_hex { XCTAssertEqual(Data(image.pixels), Data(hex: hex), key) }
        }
    }

    func testDecodesFromMemoryTheSameAsFromFile() throws {
        let path = try TestSupport.fixture("rgb.jpg")
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(try Image.decode(data, name: "mem"), try Image.load(path: path))
    }

    // MARK: Bad input

    private func assertError(_ body: @autoclosure () throws -> Image, mentions fragments: [String],
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(error is KVCError, "not a KVCError: \(text)", file: file, line: line)
            for f in fragments { XCTAssertTrue(text.contains(f), "'\(text)' does not mention '\(f)'", file: file, line: line) }
        }
    }

    func testMissingNonImageTruncatedAndCorruptFilesNameTheFile() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let missing = dir + "/missing.png"
        assertError(try Image.load(path: missing), mentions: [missing, "not found"])
        assertError(try Image.load(path: dir), mentions: [dir, "not a regular file"])

        let empty = dir + "/empty.png"
        XCTAssertTrue(FileManager.default.createFile(atPath: empty, contents: Data()))
        assertError(try Image.load(path: empty), mentions: [empty, "empty"])

        let text = dir + "/notes.png"
        try "hello, not an image".write(toFile: text, atomically: true, encoding: .utf8)
        assertError(try Image.load(path: text), mentions: [text, "not a PNG or JPEG"])

        for name in ["rgb.png", "interlaced.png", "rgb.jpg", "progressive.jpg"] {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: TestSupport.fixture(name)))
            let format = name.hasSuffix(".png") ? "PNG" : "JPEG"
            // Cut inside the signature, the header, the pixel data, and (PNG) the last data chunk's CRC. A PNG cut
            // only inside the trailing IEND chunk still has all its pixels and decodes, as in other readers.
            for keep in [8, 20, bytes.count / 2, bytes.count - (format == "PNG" ? 14 : 3)] {
                let truncated = dir + "/truncated-\(keep)-" + name
                try bytes.prefix(keep).write(to: URL(fileURLWithPath: truncated))
                assertError(try Image.load(path: truncated), mentions: [truncated, format])
            }
        }

        // A PNG whose pixel data is damaged fails its zlib/CRC checks.
        var png = [UInt8](try Data(contentsOf: URL(fileURLWithPath: TestSupport.fixture("rgb.png"))))
        let idat = try XCTUnwrap(firstIndex(of: Array("IDAT".utf8), in: png))
        for i in idat + 6..<idat + 12 { png[i] ^= 0x5A }
        let corrupt = dir + "/corrupt.png"
        try Data(png).write(to: URL(fileURLWithPath: corrupt))
        assertError(try Image.load(path: corrupt), mentions: [corrupt, "PNG"])
    }

    func testOversizedHeadersAreRefusedBeforeAllocation() throws {
        // A PNG header declaring 100000 x 100000 pixels: refused from the header alone.
        var png = [UInt8](try Data(contentsOf: URL(fileURLWithPath: TestSupport.fixture("gray.png"))))
        // IHDR data starts at byte 16: width, height (big-endian). The CRC no longer matches, so re-sign it.
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        png.replaceSubrange(16..<24, with: be32(100_000) + be32(100_000))
        png.replaceSubrange(29..<33, with: be32(crc32(Array(png[12..<29]))))
        assertError(try Image.decode(Data(png), name: "huge.png"), mentions: ["huge.png", "100000x100000", "at most"])

        // A small real file refused under tight limits names both sizes.
        let limits = ImageLimits(maxSide: 4, maxPixels: 16)
        assertError(try Image.load(path: TestSupport.fixture("rgb.jpg"), limits: limits), mentions: ["rgb.jpg", "19x13"])
        assertError(try Image.load(path: TestSupport.fixture("rgb.png"), limits: limits), mentions: ["rgb.png", "7x5"])
    }

    // MARK: Transforms

    func testBilinearResize() throws {
        // Hand-derived (half-pixel centres): upsampling [0, 255] to 4 samples gives 0, 63.75, 191.25, 255.
        let row = Image(width: 2, height: 1, channels: 1, pixels: [0, 255])
        XCTAssertEqual(row.resized(width: 4, height: 1).pixels, [0, 64, 191, 255])
        // Downsampling by 2 averages each 2x2 block exactly.
        let block = Image(width: 4, height: 2, channels: 1, pixels: [0, 10, 100, 200, 20, 30, 50, 50])
        XCTAssertEqual(block.resized(width: 2, height: 1).pixels, [15, 100])
        // A constant image stays constant at any size; identity size is a no-op.
        let flat = Image(width: 5, height: 3, channels: 3, pixels: [UInt8](repeating: 77, count: 45))
        XCTAssertTrue(flat.resized(width: 13, height: 2).pixels.allSatisfy { $0 == 77 })
        let real = try Image.load(path: TestSupport.fixture("rgb.png"))
        XCTAssertEqual(real.resized(width: real.width, height: real.height), real)
        let big = real.resized(width: 64, height: 48)
        XCTAssertEqual([big.width, big.height, big.pixels.count], [64, 48, 64 * 48 * 3])
    }

    func testPlanarNormalisedFloats() throws {
        let image = Image(width: 2, height: 1, channels: 3, pixels: [0, 128, 255, 255, 0, 51])
        let chw = image.floatsCHW()
        // [-1, 1] mapping, planes R, G, B.
        let expected: [Float] = [-1, 1, 128 / 127.5 - 1, -1, 1, 51 / 127.5 - 1]
        for (a, b) in zip(chw, expected) { XCTAssertEqual(a, b, accuracy: 1e-6) }
        let custom = ImageNormalization(mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])
        XCTAssertEqual(image.floatsCHW(normalization: custom)[1], (1 - 0.485) / 0.229, accuracy: 1e-5)
    }
}

fileprivate func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
    guard haystack.count >= needle.count else { return nil }
    return (0...(haystack.count - needle.count)).first { Array(haystack[$0..<$0 + needle.count]) == needle }
}

/// CRC-32 as PNG chunks use it (to build a header that passes libpng's CRC check).
fileprivate func crc32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}
