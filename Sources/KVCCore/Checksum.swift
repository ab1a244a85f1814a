import CXXHash
import Foundation

/// Content checksums for integrity (shards, adapters, model fingerprints): XXH3-128 from the system's libxxhash,
/// fast enough to hash a 100 MB model file in a few tens of milliseconds. Not a cryptographic hash.
public enum Checksum {
    /// Lowercase hex of the 128-bit XXH3 hash of `bytes`.
    public static func xxh128(_ bytes: UnsafeRawBufferPointer) -> String {
        let h = XXH3_128bits(bytes.baseAddress, bytes.count)
        return String(format: "%016llx%016llx", h.high64, h.low64)
    }

    public static func xxh128(_ data: Data) -> String {
        data.withUnsafeBytes { xxh128($0) }
    }

    /// Hash of a file's whole content, memory-mapped.
    public static func xxh128(file path: String) throws -> String {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw KVCError.file(path, "cannot read for checksum: \(error.localizedDescription)")
        }
        return xxh128(data)
    }
}
