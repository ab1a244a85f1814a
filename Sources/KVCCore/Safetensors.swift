import Foundation

/// The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header mapping tensor names to
/// dtype/shape/byte range (plus an optional `__metadata__` string map), then the raw little-endian data.
/// Readable by Python's `safetensors` and numpy; used for parameters, cache shards and adapter payloads.
public enum SafetensorsDType: String, CaseIterable, Sendable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"
    case u16 = "U16", u32 = "U32", u64 = "U64"

    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .i8, .u8, .bool: return 1
        }
    }
}

public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let begin: Int
    public let end: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

public final class SafetensorsFile {
    /// Headers beyond this size are refused before reading them (the reference implementation uses the same bound).
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    public let metadata: [String: String]
    /// Tensors in data order.
    public let tensors: [SafetensorsTensorInfo]
    private let index: [String: Int]
    private let data: Data
    private let dataStart: Int

    public convenience init(path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw KVCError.file(path, "cannot read: \(error.localizedDescription)")
        }
        try self.init(data: data, path: path)
    }

    public init(data: Data, path: String = "<memory>") throws {
        self.path = path
        self.data = data
        guard data.count >= 8 else {
            throw KVCError.file(path, "truncated: \(data.count) bytes, a safetensors file needs at least 8 (header length)")
        }
        let headerLength = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(Self.maxHeaderBytes) else {
            throw KVCError.file(path, "header length \(headerLength) exceeds the limit of \(Self.maxHeaderBytes) bytes", offset: 0)
        }
        guard 8 + Int(headerLength) <= data.count else {
            throw KVCError.file(path, "header length \(headerLength) runs past the end of the file (\(data.count) bytes)", offset: 0)
        }
        dataStart = 8 + Int(headerLength)
        let headerData = data.subdata(in: (data.startIndex + 8)..<(data.startIndex + dataStart))
        guard let json = try? JSONSerialization.jsonObject(with: headerData), let header = json as? [String: Any] else {
            throw KVCError.file(path, "header is not a JSON object", offset: 8)
        }
        var meta: [String: String] = [:]
        var infos: [SafetensorsTensorInfo] = []
        let dataBytes = data.count - dataStart
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else {
                    throw KVCError.file(path, "__metadata__ must be an object of strings")
                }
                for (k, v) in m {
                    guard let s = v as? String else { throw KVCError.file(path, "__metadata__.\(k) is not a string") }
                    meta[k] = s
                }
                continue
            }
            infos.append(try Self.parseEntry(name: name, value: value, dataBytes: dataBytes, path: path))
        }
        infos.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var cursor = 0
        for info in infos {
            // The format has no holes and no overlaps: each tensor starts where the previous ended.
            guard info.begin == cursor else {
                throw KVCError.file(path, "tensor '\(info.name)' starts at data offset \(info.begin), expected \(cursor) "
                                    + "(overlapping or non-contiguous tensors)")
            }
            cursor = info.end
        }
        guard cursor == dataBytes else {
            throw KVCError.file(path, "data section holds \(dataBytes) bytes but the tensors cover \(cursor) "
                                + "(truncated file or trailing bytes)")
        }
        metadata = meta
        tensors = infos
        index = Dictionary(uniqueKeysWithValues: infos.enumerated().map { ($1.name, $0) })
    }

    private static func parseEntry(name: String, value: Any, dataBytes: Int, path: String) throws -> SafetensorsTensorInfo {
        guard let entry = value as? [String: Any] else { throw KVCError.file(path, "tensor '\(name)': entry is not an object") }
        guard let dt = entry["dtype"] as? String else { throw KVCError.file(path, "tensor '\(name)': missing field 'dtype'") }
        guard let dtype = SafetensorsDType(rawValue: dt) else {
            throw KVCError.file(path, "tensor '\(name)': unknown dtype '\(dt)' (expected one of "
                                + SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ") + ")")
        }
        guard let shapeAny = entry["shape"] as? [Any], let shape = shapeAny.map({ ($0 as? NSNumber)?.intValue }) as? [Int],
              shape.allSatisfy({ $0 >= 0 }) else {
            throw KVCError.file(path, "tensor '\(name)': field 'shape' must be a list of non-negative integers")
        }
        guard let offsAny = entry["data_offsets"] as? [Any], offsAny.count == 2,
              let begin = (offsAny[0] as? NSNumber)?.intValue, let end = (offsAny[1] as? NSNumber)?.intValue,
              begin >= 0, begin <= end else {
            throw KVCError.file(path, "tensor '\(name)': field 'data_offsets' must be [begin, end] with 0 <= begin <= end")
        }
        guard end <= dataBytes else {
            throw KVCError.file(path, "tensor '\(name)': data_offsets end \(end) is past the data section (\(dataBytes) bytes)")
        }
        var count = 1
        for d in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, p <= dataBytes else {
                throw KVCError.file(path, "tensor '\(name)': shape \(shape) is larger than the file")
            }
            count = p
        }
        guard count * dtype.byteSize == end - begin else {
            throw KVCError.file(path, "tensor '\(name)': shape \(shape) of \(dt) needs \(count * dtype.byteSize) bytes, "
                                + "data_offsets span \(end - begin)")
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }

    public var names: [String] { tensors.map(\.name) }

    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        guard let i = index[name] else { throw KVCError.file(path, "no tensor named '\(name)'") }
        return tensors[i]
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }

    /// Calls `body` with the tensor's raw little-endian bytes (valid only inside the call).
    public func withRawBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let t = try info(name)
        return try data.withUnsafeBytes { raw in
            try body(UnsafeRawBufferPointer(rebasing: raw[(dataStart + t.begin)..<(dataStart + t.end)]))
        }
    }

    /// The tensor as float32 (converted from F32, F16, BF16 or F64), with its shape.
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        let n = t.elementCount
        guard n > 0 else { return [] }
        return try withRawBytes(name) { raw in
            try [Float](unsafeUninitializedCapacity: n) { out, filled in
                let dst = out.baseAddress!
                switch t.dtype {
                case .f32:
                    _ = memcpy(dst, raw.baseAddress!, n * 4)
                case .f16:
                    // The data section is not guaranteed 2-byte aligned in memory: copy first.
                    var tmp = [UInt16](repeating: 0, count: n)
                    tmp.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, raw.baseAddress!, n * 2) }
                    tmp.withUnsafeBufferPointer { HalfConversion.halfToFloat($0.baseAddress!, dst, count: n) }
                case .bf16:
                    var tmp = [UInt16](repeating: 0, count: n)
                    tmp.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, raw.baseAddress!, n * 2) }
                    tmp.withUnsafeBufferPointer { HalfConversion.bfloat16ToFloat($0.baseAddress!, dst, count: n) }
                case .f64:
                    for i in 0..<n { dst[i] = Float(raw.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
                default:
                    throw KVCError.file(path, "tensor '\(name)' has dtype \(t.dtype.rawValue), expected F32, F16, BF16 or F64")
                }
                filled = n
            }
        }
    }

    /// Integer tensors (I64, I32, I16, I8, U8, U16, U32, BOOL) widened to Int.
    public func ints(_ name: String) throws -> [Int] {
        let t = try info(name)
        let n = t.elementCount
        return try withRawBytes(name) { raw in
            switch t.dtype {
            case .i64: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            case .u64: return (0..<n).map { Int(truncatingIfNeeded: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)) }
            case .i32: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
            case .u32: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
            case .i16: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self)) }
            case .u16: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
            case .i8: return (0..<n).map { Int(Int8(bitPattern: raw[$0])) }
            case .u8, .bool: return (0..<n).map { Int(raw[$0]) }
            default:
                throw KVCError.file(path, "tensor '\(name)' has dtype \(t.dtype.rawValue), expected an integer type")
            }
        }
    }
}

/// Builds a safetensors file in memory; tensors keep the order they were added in.
public struct SafetensorsWriter {
    private var entries: [(name: String, dtype: SafetensorsDType, shape: [Int], bytes: Data)] = []
    public var metadata: [String: String] = [:]

    public init(metadata: [String: String] = [:]) { self.metadata = metadata }

    public mutating func add(_ name: String, dtype: SafetensorsDType, shape: [Int], bytes: Data) throws {
        guard !entries.contains(where: { $0.name == name }), name != "__metadata__" else {
            throw KVCError("safetensors writer: duplicate or reserved tensor name '\(name)'")
        }
        let count = shape.reduce(1, *)
        guard count * dtype.byteSize == bytes.count else {
            throw KVCError("safetensors writer: tensor '\(name)' shape \(shape) of \(dtype.rawValue) needs "
                           + "\(count * dtype.byteSize) bytes, got \(bytes.count)")
        }
        entries.append((name, dtype, shape, bytes))
    }

    /// Adds float32 values stored as `dtype` (F32, F16 or BF16).
    public mutating func add(_ name: String, floats: [Float], shape: [Int], dtype: SafetensorsDType = .f32) throws {
        guard floats.count == shape.reduce(1, *) else {
            throw KVCError("safetensors writer: tensor '\(name)' has \(floats.count) values for shape \(shape)")
        }
        let bytes: Data
        switch dtype {
        case .f32:
            bytes = floats.withUnsafeBytes { Data($0) }
        case .f16:
            bytes = HalfConversion.floatToHalf(floats).withUnsafeBytes { Data($0) }
        case .bf16:
            bytes = floats.map(HalfConversion.bfloat16Bits).withUnsafeBytes { Data($0) }
        default:
            throw KVCError("safetensors writer: tensor '\(name)': floats can be stored as F32, F16 or BF16, not \(dtype.rawValue)")
        }
        try add(name, dtype: dtype, shape: shape, bytes: bytes)
    }

    public mutating func add(_ name: String, int32s: [Int32], shape: [Int]) throws {
        try add(name, dtype: .i32, shape: shape, bytes: int32s.withUnsafeBytes { Data($0) })
    }

    public mutating func add(_ name: String, int64s: [Int64], shape: [Int]) throws {
        try add(name, dtype: .i64, shape: shape, bytes: int64s.withUnsafeBytes { Data($0) })
    }

    public func serialize() -> Data {
        var header = "{"
        var parts: [String] = []
        if !metadata.isEmpty {
            let m = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            parts.append("\"__metadata__\":{" + m.joined(separator: ",") + "}")
        }
        var offset = 0
        for e in entries {
            let shape = e.shape.map(String.init).joined(separator: ",")
            parts.append("\(jsonString(e.name)):{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(shape)],"
                         + "\"data_offsets\":[\(offset),\(offset + e.bytes.count)]}")
            offset += e.bytes.count
        }
        header += parts.joined(separator: ",") + "}"
        // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
        while (8 + header.utf8.count) % 8 != 0 { header += " " }
        var out = Data(capacity: 8 + header.utf8.count + offset)
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: Array(header.utf8))
        for e in entries { out.append(e.bytes) }
        return out
    }

    /// Writes atomically (temporary file, fsync, rename).
    public func write(to path: String) throws { try AtomicFile.write(serialize(), to: path) }
}

/// JSON string literal with the escapes JSON requires.
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}
