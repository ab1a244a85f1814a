import KVCCore

/// A bounds-checked little-endian reader over the file bytes. Every read states what it is reading, so a
/// truncated or lying file produces an error naming the field and the offset.
struct GGUFByteCursor {
    let base: UnsafeRawPointer
    let count: Int
    let path: String
    private(set) var offset: Int = 0

    init(base: UnsafeRawPointer, count: Int, path: String) {
        self.base = base
        self.count = count
        self.path = path
    }

    var remaining: Int { count - offset }

    func error(_ what: String, at position: Int? = nil) -> KVCError {
        KVCError.file(path, what, offset: position ?? offset)
    }

    /// Fails unless `n` more bytes are present.
    @inline(__always)
    func require(_ n: Int, for field: @autoclosure () -> String) throws {
        guard n >= 0, n <= count - offset else {
            throw error("truncated: \(field()) needs \(n) bytes but only \(count - offset) remain (file size \(count))")
        }
    }

    @inline(__always)
    mutating func load<T: FixedWidthInteger>(_: T.Type, _ field: @autoclosure () -> String) throws -> T {
        try require(MemoryLayout<T>.size, for: field())
        let v = T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func u8(_ field: @autoclosure () -> String) throws -> UInt8 { try load(UInt8.self, field()) }
    mutating func u32(_ field: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, field()) }
    mutating func u64(_ field: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, field()) }

    /// A count or length stored as uint64, checked to need at most the bytes left in the file
    /// (`minimumBytesEach` per item), so nothing is allocated for counts the file cannot hold.
    mutating func count(_ field: @autoclosure () -> String, minimumBytesEach: Int) throws -> Int {
        let start = offset
        let raw = try u64(field())
        let limit = minimumBytesEach > 0 ? remaining / minimumBytesEach : Int.max
        guard raw <= UInt64(limit) else {
            throw error("\(field()) is \(raw), but the \(remaining) bytes left in the file can hold at most \(limit)",
                        at: start)
        }
        return Int(raw)
    }

    /// A GGUF string: uint64 byte length, then UTF-8 bytes without a terminator. Invalid UTF-8 is repaired with
    /// U+FFFD (as a lenient reader); lengths are checked against the bytes left before anything is read.
    mutating func string(_ field: @autoclosure () -> String) throws -> String {
        let length = try count("length of \(field())", minimumBytesEach: 1)
        let bytes = UnsafeRawBufferPointer(start: base + offset, count: length)
        offset += length
        return String(decoding: bytes, as: UTF8.self)
    }

    mutating func skip(_ n: Int) throws {
        try require(n, for: "skipped bytes")
        offset += n
    }

    /// Advances to the next multiple of `alignment` (may move past the end; callers check).
    mutating func align(to alignment: Int) {
        let r = offset % alignment
        if r != 0 { offset += alignment - r }
    }
}
