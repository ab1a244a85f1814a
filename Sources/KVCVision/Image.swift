import CPNG
import Foundation
import KVCCore

/// An 8-bit image in row-major, channel-interleaved layout (`pixels[(y * width + x) * channels + c]`).
///
/// Decoded files are always RGB (`channels == 3`): grey, palette and 16-bit files are converted, and transparency is
/// composited onto white. The front end consumes images through `writeCHW(into:normalization:)`.
public struct Image: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public let channels: Int
    public var pixels: [UInt8]

    /// Wraps existing pixels. Mismatched sizes are programmer errors (precondition), not input errors.
    public init(width: Int, height: Int, channels: Int = 3, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && channels > 0, "Image: bad size \(width)x\(height)x\(channels)")
        precondition(pixels.count == width * height * channels,
                     "Image: \(pixels.count) bytes do not fill \(width)x\(height)x\(channels)")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// The value of channel `c` at column `x`, row `y`.
    @inlinable public subscript(x: Int, y: Int, c: Int) -> UInt8 {
        pixels[(y * width + x) * channels + c]
    }
}

/// Sizes an image file may declare before the decoder refuses it, checked on the header before any pixel buffer is
/// allocated. The defaults accept anything a camera produces and refuse decompression bombs.
public struct ImageLimits: Sendable {
    public var maxSide: Int
    public var maxPixels: Int
    public var maxFileBytes: Int

    public init(maxSide: Int = 16_384, maxPixels: Int = 64 * 1024 * 1024, maxFileBytes: Int = 256 * 1024 * 1024) {
        self.maxSide = maxSide
        self.maxPixels = maxPixels
        self.maxFileBytes = maxFileBytes
    }

    public static let `default` = ImageLimits()
}

public enum ImageFormat: String, Sendable {
    case png = "PNG"
    case jpeg = "JPEG"

    /// Recognises a file by its signature bytes (the extension is not trusted).
    public static func detect<Bytes: Collection>(_ bytes: Bytes) -> ImageFormat? where Bytes.Element == UInt8 {
        let head = Array(bytes.prefix(8))
        if head == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] { return .png }
        if head.count >= 3 && head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF { return .jpeg }
        return nil
    }
}

extension Image {
    /// Reads and decodes a PNG or JPEG file. Every failure is a `KVCError` naming `path`.
    public static func load(path: String, limits: ImageLimits = .default) throws -> Image {
        try decode(readImageFile(path, limits: limits), name: path, limits: limits)
    }

    /// Decodes PNG or JPEG bytes; `name` (usually the path) is used in error messages.
    public static func decode(_ data: Data, name: String, limits: ImageLimits = .default) throws -> Image {
        guard !data.isEmpty else { throw KVCError.file(name, "empty file; expected a PNG or JPEG image") }
        guard let format = ImageFormat.detect(data) else {
            let head = data.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")
            throw KVCError.file(name, "not a PNG or JPEG image (first bytes \(head); expected 89 50 4e 47 0d 0a 1a 0a "
                                + "for PNG or ff d8 ff for JPEG)")
        }
        return try data.withUnsafeBytes { raw in
            try decodeRGB(raw, format: format, name: name, limits: limits)
        }
    }
}

/// Reads a whole file after checking that it exists, is a regular file and is not absurdly large.
fileprivate func readImageFile(_ path: String, limits: ImageLimits) throws -> Data {
    var info = stat()
    guard stat(path, &info) == 0 else {
        throw KVCError.file(path, errno == ENOENT ? "image file not found"
                                                  : "cannot open image: \(String(cString: strerror(errno)))")
    }
    guard (info.st_mode & S_IFMT) == S_IFREG else { throw KVCError.file(path, "not a regular file; expected an image") }
    guard Int(info.st_size) <= limits.maxFileBytes else {
        throw KVCError.file(path, "file is \(info.st_size) bytes; images larger than \(limits.maxFileBytes) bytes are refused")
    }
    guard let handle = FileHandle(forReadingAtPath: path) else {
        throw KVCError.file(path, "cannot open image: \(String(cString: strerror(errno)))")
    }
    defer { try? handle.close() }
    do {
        return try handle.readToEnd() ?? Data()
    } catch {
        throw KVCError.file(path, "read failed: \(error.localizedDescription)")
    }
}

fileprivate func decodeRGB(_ raw: UnsafeRawBufferPointer, format: ImageFormat, name: String,
                           limits: ImageLimits) throws -> Image {
    guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
        throw KVCError.file(name, "empty file; expected a PNG or JPEG image")
    }
    var out: UnsafeMutablePointer<UInt8>?
    var width: UInt32 = 0, height: UInt32 = 0
    var message = [CChar](repeating: 0, count: 256)
    let status: Int32 = message.withUnsafeMutableBufferPointer { msg in
        switch format {
        case .png:
            return kvc_png_decode_rgb(base, raw.count, UInt(limits.maxSide), UInt(limits.maxPixels), &out,
                                      &width, &height, msg.baseAddress, msg.count)
        case .jpeg:
            return kvc_jpeg_decode_rgb(base, raw.count, UInt(limits.maxSide), UInt(limits.maxPixels), &out,
                                       &width, &height, msg.baseAddress, msg.count)
        }
    }
    switch status {
    case KVC_IMAGE_OK:
        guard let out else { throw KVCError.file(name, "\(format.rawValue) decoder returned no pixels") }
        defer { free(out) }
        let count = Int(width) * Int(height) * 3
        let pixels = [UInt8](UnsafeBufferPointer(start: out, count: count))
        return Image(width: Int(width), height: Int(height), channels: 3, pixels: pixels)
    case KVC_IMAGE_TOO_LARGE:
        throw KVCError.file(name, "\(format.rawValue) header declares \(width)x\(height) pixels; expected a non-empty "
                            + "image of at most \(limits.maxSide) pixels a side and \(limits.maxPixels) pixels in all")
    default:
        let reason = message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        throw KVCError.file(name, "invalid or damaged \(format.rawValue) data: "
                            + (reason.isEmpty ? "decoder failed" : reason))
    }
}
