import CZstd
import Foundation
import KVCCore

/// The `.kvcap` container (DESIGN §5): magic, version, payload length, a zstd frame of a safetensors payload, and an
/// XXH3-128 checksum of the uncompressed payload. Float16/bfloat16 tensors are byte-shuffled before compression
/// (all low bytes, then all high bytes), which groups the slowly varying exponent bytes and compresses better.
/// Reading validates every length against the file and a size limit before allocating, and checks the checksum.
public enum AdapterFile {
    public static let magic: [UInt8] = Array("KVCAPSUL".utf8)
    public static let version: UInt32 = 1
    /// Refuse payloads larger than this (an adapter is a few MB).
    public static let maxPayloadBytes = 1 << 30

    /// Writes `payload` (a safetensors file in memory) atomically.
    public static func write(payload: SafetensorsWriter, to path: String, level: Int32 = 19) throws {
        let raw = try shuffled(try SafetensorsFile(data: payload.serialize()), inverse: false)
        let bound = ZSTD_compressBound(raw.count)
        var compressed = Data(count: bound)
        let n = compressed.withUnsafeMutableBytes { dst in
            raw.withUnsafeBytes { src in ZSTD_compress(dst.baseAddress, bound, src.baseAddress, raw.count, level) }
        }
        guard ZSTD_isError(n) == 0 else {
            throw KVCError.file(path, "zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))")
        }
        compressed.count = n
        var out = Data(magic)
        withUnsafeBytes(of: version.littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt64(raw.count).littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt64(n).littleEndian) { out.append(contentsOf: $0) }
        out.append(compressed)
        out.append(Data(hex128: Checksum.xxh128(raw)))
        try AtomicFile.write(out, to: path)
    }

    /// Reads and verifies a `.kvcap` file, returning its (unshuffled) safetensors payload.
    public static func read(path: String) throws -> SafetensorsFile {
        guard let data = FileManager.default.contents(atPath: path) else { throw KVCError.file(path, "cannot read") }
        let header = magic.count + 4 + 8 + 8
        guard data.count >= header + 16 else {
            throw KVCError.file(path, "truncated: \(data.count) bytes, a .kvcap file has at least \(header + 16)")
        }
        guard Array(data.prefix(magic.count)) == magic else {
            throw KVCError.file(path, "not a KVCapsule adapter (bad magic; expected \"KVCAPSUL\")", offset: 0)
        }
        func u64(_ at: Int) -> UInt64 { data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }
        let v = data.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: magic.count, as: UInt32.self)) }
        guard v == version else { throw KVCError.file(path, "format version \(v), this build reads \(version)", offset: magic.count) }
        let rawSize = u64(magic.count + 4), compressedSize = u64(magic.count + 12)
        guard rawSize <= UInt64(maxPayloadBytes) else {
            throw KVCError.file(path, "payload of \(rawSize) bytes exceeds the limit of \(maxPayloadBytes)", offset: magic.count + 4)
        }
        guard compressedSize == UInt64(data.count - header - 16) else {
            throw KVCError.file(path, "compressed length \(compressedSize) does not match the file (\(data.count - header - 16) bytes "
                                + "between header and checksum): truncated or extended", offset: magic.count + 12)
        }
        var raw = Data(count: Int(rawSize))
        let got = raw.withUnsafeMutableBytes { dst in
            data.withUnsafeBytes { src in
                ZSTD_decompress(dst.baseAddress, Int(rawSize), src.baseAddress! + header, Int(compressedSize))
            }
        }
        guard ZSTD_isError(got) == 0 else {
            throw KVCError.file(path, "zstd frame is corrupt: \(String(cString: ZSTD_getErrorName(got)))", offset: header)
        }
        guard got == Int(rawSize) else {
            throw KVCError.file(path, "zstd frame holds \(got) bytes, header says \(rawSize)", offset: header)
        }
        let stored = data.suffix(16).map { String(format: "%02x", $0) }.joined()
        let actual = Checksum.xxh128(raw)
        guard stored == actual else {
            throw KVCError.file(path, "checksum mismatch (stored \(stored), content \(actual)): the file is corrupt",
                                offset: data.count - 16)
        }
        let shuffledFile = try SafetensorsFile(data: raw, path: path)
        return try SafetensorsFile(data: try shuffled(shuffledFile, inverse: true), path: path)
    }

    /// The safetensors bytes with every 2-byte tensor's bytes split into planes (or joined back when `inverse`).
    static func shuffled(_ file: SafetensorsFile, inverse: Bool) throws -> Data {
        var writer = SafetensorsWriter(metadata: file.metadata)
        for t in file.tensors {
            var bytes = try file.withRawBytes(t.name) { Data($0) }
            if t.dtype.byteSize == 2 && !bytes.isEmpty {
                let n = bytes.count / 2
                let src = [UInt8](bytes)
                var dst = [UInt8](repeating: 0, count: bytes.count)
                for i in 0..<n {
                    if inverse { dst[2 * i] = src[i]; dst[2 * i + 1] = src[n + i] }
                    else { dst[i] = src[2 * i]; dst[n + i] = src[2 * i + 1] }
                }
                bytes = Data(dst)
            }
            try writer.add(t.name, dtype: t.dtype, shape: t.shape, bytes: bytes)
        }
        return writer.serialize()
    }
}

private extension Data {
    init(hex128 hex: String) {
        var bytes: [UInt8] = []
        var it = hex.utf8.makeIterator()
        func nibble(_ c: UInt8) -> UInt8 { c >= 97 ? c - 87 : c - 48 }
        while let a = it.next(), let b = it.next() { bytes.append(nibble(a) << 4 | nibble(b)) }
        self.init(bytes)
    }
}
