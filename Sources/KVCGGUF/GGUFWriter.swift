import Foundation
import KVCCore

/// Little-endian GGUF encoding primitives. Public so tests can hand-build malformed files field by field.
public struct GGUFByteBuilder {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    public mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes.append(contentsOf: s.utf8)
    }
    public mutating func pad(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }

    /// The on-disk type tag of a value (an empty array is tagged as an array of uint8).
    public static func typeTag(_ v: GGUFValue) -> UInt32 {
        switch v {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }

    /// The value's payload, without its type tag.
    public mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): u8(x)
        case .int8(let x): u8(UInt8(bitPattern: x))
        case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) }
        case .int16(let x): withUnsafeBytes(of: x.littleEndian) { bytes.append(contentsOf: $0) }
        case .uint32(let x): u32(x)
        case .int32(let x): u32(UInt32(bitPattern: x))
        case .uint64(let x): u64(x)
        case .int64(let x): u64(UInt64(bitPattern: x))
        case .float32(let x): u32(x.bitPattern)
        case .float64(let x): u64(x.bitPattern)
        case .bool(let x): u8(x ? 1 : 0)
        case .string(let s): string(s)
        case .array(let items):
            u32(items.first.map(Self.typeTag) ?? 0)
            u64(UInt64(items.count))
            for item in items { value(item) }
        }
    }

    /// A metadata entry: key, type tag, payload.
    public mutating func keyValue(_ key: String, _ v: GGUFValue) {
        string(key)
        u32(Self.typeTag(v))
        value(v)
    }
}

/// Builds well-formed GGUF v3 files: metadata in insertion order, tensors laid out at aligned offsets.
/// Used by tests (synthetic and hostile files) and by tools that export small models.
public struct GGUFWriter {
    public struct Tensor {
        public var name: String
        public var type: GGMLType
        /// ggml order, ne0 first.
        public var dims: [Int]
        public var data: [UInt8]
    }

    public var version: UInt32 = 3
    /// Written as `general.alignment` when it differs from the default 32.
    public var alignment: Int = 32
    public private(set) var metadata: [(key: String, value: GGUFValue)] = []
    public private(set) var tensors: [Tensor] = []

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value } else { metadata.append((key, value)) }
    }

    /// Adds a tensor from its already-encoded bytes (any type; the byte count is checked against the dims).
    public mutating func addTensor(_ name: String, type: GGMLType, dims: [Int], data: [UInt8]) {
        let elements = dims.reduce(1, *)
        precondition((dims.first ?? 1) % type.blockSize == 0, "row length must be a multiple of the block size")
        precondition(data.count == elements / type.blockSize * type.bytesPerBlock, "data size does not match dims")
        tensors.append(Tensor(name: name, type: type, dims: dims, data: data))
    }

    /// Adds a float32 tensor.
    public mutating func addTensor(_ name: String, dims: [Int], floats: [Float]) {
        let data = floats.withUnsafeBytes { Array($0) }
        addTensor(name, type: .f32, dims: dims, data: data)
    }

    /// The file image.
    public func serialize() -> [UInt8] {
        var b = GGUFByteBuilder()
        b.raw(Array("GGUF".utf8))
        b.u32(version)
        b.u64(UInt64(tensors.count))
        var entries = metadata
        if alignment != 32, !entries.contains(where: { $0.key == "general.alignment" }) {
            entries.append(("general.alignment", .uint32(UInt32(alignment))))
        }
        b.u64(UInt64(entries.count))
        for (k, v) in entries { b.keyValue(k, v) }
        var offset = 0
        for t in tensors {
            b.string(t.name)
            b.u32(UInt32(t.dims.count))
            for d in t.dims { b.u64(UInt64(d)) }
            b.u32(t.type.rawValue)
            b.u64(UInt64(offset))
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        b.pad(to: alignment)
        for t in tensors {
            b.raw(t.data)
            b.pad(to: alignment)
        }
        return b.bytes
    }

    /// Writes the file atomically.
    public func write(to path: String) throws {
        try AtomicFile.write(Data(serialize()), to: path)
    }
}
