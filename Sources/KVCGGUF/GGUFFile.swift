import Foundation
import KVCCore

/// Where one tensor's data lives and how it is laid out.
public struct GGUFTensorInfo: Equatable, Sendable {
    public let name: String
    public let type: GGMLType
    /// ggml order: `dims[0]` (ne0) is the row length, the fastest-varying index.
    public let dims: [Int]
    /// Absolute byte offset of the data in the file (already includes the data section start).
    public let offset: Int
    public let byteCount: Int
    public let elementCount: Int

    /// Elements per row (ne0); 1 for a zero-dimensional tensor.
    public var rowLength: Int { dims.first ?? 1 }
    /// Rows = product of the dimensions after the first.
    public var rowCount: Int { rowLength == 0 ? 0 : elementCount / rowLength }
    /// Bytes of one stored row.
    public var rowByteCount: Int { rowLength / type.blockSize * type.bytesPerBlock }
}

/// A GGUF (v3, and the identical v2 layout) model file: header, metadata and tensor directory, validated in full
/// against the file size when opened. The file is memory-mapped read-only; tensor bytes are read on demand.
///
/// Immutable after `init`, so one instance can be shared between threads.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let alignment: Int
    /// Byte offset where the tensor data section starts.
    public let dataOffset: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensor infos in file order.
    public let tensors: [GGUFTensorInfo]
    public var fileSize: Int { storage.count }

    private let storage: GGUFStorage
    private let tensorIndex: [String: Int]

    /// Maps the file read-only and validates header, metadata and tensor infos.
    public convenience init(path: String) throws {
        try self.init(storage: GGUFStorage.map(path: path), path: path)
    }

    /// Parses a GGUF image held in memory (copied); `name` is used in error messages.
    public convenience init(bytes: [UInt8], name: String = "<memory>") throws {
        let storage = bytes.withUnsafeBytes { GGUFStorage.copy($0) }
        try self.init(storage: storage, path: name)
    }

    /// Parses bytes the caller keeps alive and unchanged for the lifetime of the returned object (no copy).
    /// Meant for fuzzing and tests over large buffers.
    public convenience init(borrowing bytes: UnsafeRawBufferPointer, name: String = "<memory>") throws {
        try self.init(storage: GGUFStorage.borrow(bytes), path: name)
    }

    private init(storage: GGUFStorage, path: String) throws {
        let header = try GGUFParser.parse(base: storage.base, count: storage.count, path: path)
        self.storage = storage
        self.path = path
        self.version = header.version
        self.alignment = header.alignment
        self.dataOffset = header.dataOffset
        self.metadata = header.metadata
        self.metadataKeys = header.metadataKeys
        self.tensors = header.tensors
        var index: [String: Int] = [:]
        index.reserveCapacity(header.tensors.count)
        for (i, t) in header.tensors.enumerated() { index[t.name] = i }
        self.tensorIndex = index
    }

    // MARK: Tensors

    public func hasTensor(_ name: String) -> Bool { tensorIndex[name] != nil }

    public func tensor(_ name: String) throws -> GGUFTensorInfo {
        guard let i = tensorIndex[name] else {
            throw KVCError.file(path, "no tensor named '\(name)' (the file has \(tensors.count) tensors)")
        }
        return tensors[i]
    }

    /// The stored bytes of a tensor, valid while this `GGUFFile` lives. Bounds were checked when the file was opened.
    public func rawBytes(_ info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        precondition(info.offset >= 0 && info.byteCount >= 0 && info.offset <= storage.count - info.byteCount,
                     "tensor info '\(info.name)' does not belong to \(path)")
        return UnsafeRawBufferPointer(start: storage.base + info.offset, count: info.byteCount)
    }

    /// The tensor as float32, in storage order: row-major `[ne1][ne0]` for a 2-D tensor.
    /// Large tensors are converted on all cores.
    public func dequantize(_ name: String) throws -> [Float] {
        try dequantize(tensor(name))
    }

    public func dequantize(_ info: GGUFTensorInfo) throws -> [Float] {
        try requireDequantizable(info)
        let src = rawBytes(info)
        return [Float](unsafeUninitializedCapacity: info.elementCount) { dst, initialized in
            if info.elementCount > 0, let s = src.baseAddress, let d = dst.baseAddress {
                GGMLQuant.dequantizeParallel(info.type, s, d, count: info.elementCount)
            }
            initialized = info.elementCount
        }
    }

    /// Converts rows `rows` of a tensor (rows of `rowLength` elements) into `destination`, which must hold
    /// exactly `rows.count * rowLength` floats (a programmer error otherwise: precondition). Lets callers fill
    /// one large buffer, or fetch single embedding rows, without an intermediate array.
    public func dequantize(_ info: GGUFTensorInfo, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try requireDequantizable(info)
        precondition(rows.lowerBound >= 0 && rows.upperBound <= info.rowCount,
                     "rows \(rows) out of range for tensor '\(info.name)' with \(info.rowCount) rows")
        let count = rows.count * info.rowLength
        precondition(destination.count == count, "destination holds \(destination.count) floats, rows need \(count)")
        guard count > 0, let s = rawBytes(info).baseAddress, let d = destination.baseAddress else { return }
        GGMLQuant.dequantizeParallel(info.type, s + rows.lowerBound * info.rowByteCount, d, count: count)
    }

    private func requireDequantizable(_ info: GGUFTensorInfo) throws {
        guard info.type.canDequantize else {
            throw KVCError.file(path, "unsupported tensor type \(info.type.name) in tensor '\(info.name)' "
                                + "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
        }
    }

    // MARK: Typed metadata

    private func value(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else { throw KVCError.file(path, "metadata key '\(key)' is missing") }
        return v
    }

    private func mismatch(_ key: String, expected: String, _ v: GGUFValue) -> KVCError {
        KVCError.file(path, "metadata key '\(key)': expected \(expected), found \(v.typeName)")
    }

    public func string(_ key: String) throws -> String {
        let v = try value(key)
        guard let s = v.stringValue else { throw mismatch(key, expected: "string", v) }
        return s
    }

    /// Any integer type that fits in `Int`.
    public func int(_ key: String) throws -> Int {
        let v = try value(key)
        guard let i = v.intValue else {
            if case .uint64(let u) = v { throw KVCError.file(path, "metadata key '\(key)': uint64 value \(u) does not fit in Int") }
            throw mismatch(key, expected: "an integer", v)
        }
        return i
    }

    /// float32 or float64 (integers convert too).
    public func float(_ key: String) throws -> Float {
        let v = try value(key)
        guard let f = v.floatValue else { throw mismatch(key, expected: "a float", v) }
        return f
    }

    public func bool(_ key: String) throws -> Bool {
        let v = try value(key)
        guard let b = v.boolValue else { throw mismatch(key, expected: "bool", v) }
        return b
    }

    public func stringArray(_ key: String) throws -> [String] {
        try typedArray(key, expected: "array of string") { $0.stringValue }
    }

    public func intArray(_ key: String) throws -> [Int] {
        try typedArray(key, expected: "array of integers") { $0.intValue }
    }

    public func floatArray(_ key: String) throws -> [Float] {
        try typedArray(key, expected: "array of floats") { $0.floatValue }
    }

    // Optional keys: a missing key gives the default, a present key of the wrong type is still an error.

    public func string(_ key: String, default fallback: String) throws -> String {
        metadata[key] == nil ? fallback : try string(key)
    }

    public func int(_ key: String, default fallback: Int) throws -> Int {
        metadata[key] == nil ? fallback : try int(key)
    }

    public func float(_ key: String, default fallback: Float) throws -> Float {
        metadata[key] == nil ? fallback : try float(key)
    }

    public func bool(_ key: String, default fallback: Bool) throws -> Bool {
        metadata[key] == nil ? fallback : try bool(key)
    }

    private func typedArray<T>(_ key: String, expected: String, _ convert: (GGUFValue) -> T?) throws -> [T] {
        let v = try value(key)
        guard let items = v.arrayValue else { throw mismatch(key, expected: expected, v) }
        var out: [T] = []
        out.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            guard let x = convert(item) else {
                throw KVCError.file(path, "metadata key '\(key)': expected \(expected), element \(i) is \(item.typeName)")
            }
            out.append(x)
        }
        return out
    }
}
