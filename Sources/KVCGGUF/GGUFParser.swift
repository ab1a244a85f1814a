import KVCCore

/// What the header, metadata and tensor-info sections of a GGUF file say, fully validated against the file size.
struct GGUFHeader {
    var version: UInt32
    var alignment: Int
    var metadata: [String: GGUFValue]
    var metadataKeys: [String]       // file order
    var tensors: [GGUFTensorInfo]
    var dataOffset: Int
}

/// Parses GGUF v2/v3 (little-endian; the two versions share one layout). Every count is checked against the bytes
/// left before anything is allocated, every tensor against the data section, and errors name field and offset.
enum GGUFParser {
    static let magic: UInt32 = 0x4655_4747   // "GGUF" read little-endian
    static let defaultAlignment = 32
    static let maxDims = 4                   // GGML_MAX_DIMS
    /// Arrays of arrays are legal; the depth is bounded so a hostile file cannot exhaust the stack.
    static let maxArrayNesting = 8
    /// ggml's GGML_MAX_NAME: ggml cannot hold longer tensor names, and a bound keeps garbage "names" read from a
    /// corrupt file out of memory and error messages.
    static let maxTensorNameBytes = 63
    /// The spec's limit on key length.
    static let maxKeyBytes = 65_535
    /// Decoded metadata array elements allowed in one file, in total. A decoded element takes ~24 bytes while a
    /// hostile file can encode one in a single byte, so counts checked only against the file size could still
    /// ask for gigabytes. The largest real tokenizers (262k-token vocabularies with scores, types and merges) hold under 1M.
    static let maxMetadataArrayElements = 1 << 22

    static func parse(base: UnsafeRawPointer, count: Int, path: String) throws -> GGUFHeader {
        var c = GGUFByteCursor(base: base, count: count, path: path)

        let fileMagic = try c.u32("magic")
        guard fileMagic == magic else {
            let bytes = withUnsafeBytes(of: fileMagic.littleEndian) { Array($0) }
            let shown = bytes.map { (32...126).contains($0) ? String(UnicodeScalar($0)) : "\\x" + hex2($0) }.joined()
            throw c.error("not a GGUF file: magic is \"\(shown)\", expected \"GGUF\"", at: 0)
        }
        let version = try c.u32("version")
        guard version == 2 || version == 3 else {
            if version.byteSwapped == 2 || version.byteSwapped == 3 {
                throw c.error("big-endian GGUF (version \(version.byteSwapped)) is not supported", at: 4)
            }
            throw c.error("unsupported GGUF version \(version) (supported: 3, and 2 which has the same layout)", at: 4)
        }
        // Smallest encodings: a tensor info is name length + n_dims + type + offset; a KV is key length + type + 1 byte.
        let tensorCountOffset = c.offset
        let tensorCountRaw = try c.u64("tensor count")
        let kvCount = try c.count("metadata key-value count", minimumBytesEach: 8 + 4 + 1)
        guard tensorCountRaw <= UInt64(c.remaining / (8 + 4 + 4 + 8)) else {
            throw c.error("tensor count is \(tensorCountRaw), but the \(c.remaining) bytes left in the file can hold "
                          + "at most \(c.remaining / 24) tensor infos", at: tensorCountOffset)
        }
        let tensorCount = Int(tensorCountRaw)

        // Reservations are capped: a count that the remaining bytes could hold in theory is still only a claim.
        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(min(kvCount, 4096))
        var keys: [String] = []
        keys.reserveCapacity(min(kvCount, 4096))
        var elementBudget = maxMetadataArrayElements
        for i in 0..<kvCount {
            let keyOffset = c.offset
            let key = try c.string("key of metadata entry \(i)")
            guard key.utf8.count <= maxKeyBytes else {
                throw c.error("key of metadata entry \(i) is \(key.utf8.count) bytes long; the limit is \(maxKeyBytes)",
                              at: keyOffset)
            }
            let typeOffset = c.offset
            let rawType = try c.u32("value type of metadata key \(shown(key))")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw c.error("metadata key \(shown(key)) has unknown value type \(rawType) (known: 0-12)", at: typeOffset)
            }
            let value = try readValue(&c, type, depth: 0, budget: &elementBudget, context: "metadata key \(shown(key))")
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw c.error("duplicate metadata key \(shown(key))", at: keyOffset)
            }
            keys.append(key)
        }

        var alignment = defaultAlignment
        if let a = metadata["general.alignment"] {
            guard case .uint32(let v) = a else {
                throw c.error("metadata key 'general.alignment' must be uint32, found \(a.typeName)")
            }
            guard v > 0, v & (v - 1) == 0 else {
                throw c.error("metadata key 'general.alignment' is \(v); it must be a power of two")
            }
            alignment = Int(v)
        }

        struct PendingTensor { var name: String; var type: GGMLType; var dims: [Int]; var relativeOffset: Int
                               var byteCount: Int; var elementCount: Int; var infoOffset: Int }
        var pending: [PendingTensor] = []
        pending.reserveCapacity(min(tensorCount, 65_536))
        var seenNames = Set<String>()
        seenNames.reserveCapacity(min(tensorCount, 65_536))
        for i in 0..<tensorCount {
            let infoOffset = c.offset
            let name = try c.string("name of tensor \(i)")
            guard name.utf8.count <= maxTensorNameBytes else {
                throw c.error("name of tensor \(i) (\(shown(name))) is \(name.utf8.count) bytes long; ggml allows at most "
                              + "\(maxTensorNameBytes)", at: infoOffset)
            }
            guard seenNames.insert(name).inserted else {
                throw c.error("duplicate tensor name \(shown(name))", at: infoOffset)
            }
            let nDimsOffset = c.offset
            let nDims = try c.u32("dimension count of tensor \(shown(name))")
            guard nDims <= UInt32(maxDims) else {
                throw c.error("tensor \(shown(name)) has \(nDims) dimensions; at most \(maxDims) are allowed", at: nDimsOffset)
            }
            var dims: [Int] = []
            dims.reserveCapacity(Int(nDims))
            var elements = 1
            for d in 0..<Int(nDims) {
                let dimOffset = c.offset
                let raw = try c.u64("dimension \(d) of tensor \(shown(name))")
                guard raw <= UInt64(Int64.max) else {
                    throw c.error("dimension \(d) of tensor \(shown(name)) is negative or too large (\(Int64(bitPattern: raw)))",
                                  at: dimOffset)
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(raw))
                guard !overflow else {
                    throw c.error("tensor \(shown(name)): element count overflows (dimensions \(dims + [Int(raw)]))", at: dimOffset)
                }
                dims.append(Int(raw))
                elements = product
            }
            let typeOffset = c.offset
            let rawType = try c.u32("type of tensor \(shown(name))")
            guard let type = GGMLType(rawValue: rawType) else {
                throw c.error("tensor \(shown(name)) has unknown tensor type \(rawType)", at: typeOffset)
            }
            let rowLength = dims.first ?? 1
            guard rowLength % type.blockSize == 0 else {
                throw c.error("tensor \(shown(name)): row length \(rowLength) is not a multiple of the \(type.name) block size "
                              + "\(type.blockSize)", at: infoOffset)
            }
            let (bytes, bytesOverflow) = (elements / type.blockSize).multipliedReportingOverflow(by: type.bytesPerBlock)
            guard !bytesOverflow else {
                throw c.error("tensor \(shown(name)): byte size overflows (\(elements) elements of \(type.name))", at: infoOffset)
            }
            let relOffsetPosition = c.offset
            let rawOffset = try c.u64("data offset of tensor \(shown(name))")
            guard rawOffset <= UInt64(Int.max / 2) else {
                throw c.error("tensor \(shown(name)) data offset \(rawOffset) is past any possible end of file", at: relOffsetPosition)
            }
            guard Int(rawOffset) % alignment == 0 else {
                throw c.error("tensor \(shown(name)) data offset \(rawOffset) is not a multiple of the alignment \(alignment)",
                              at: relOffsetPosition)
            }
            pending.append(PendingTensor(name: name, type: type, dims: dims, relativeOffset: Int(rawOffset),
                                         byteCount: bytes, elementCount: elements, infoOffset: infoOffset))
        }

        c.align(to: alignment)
        let dataOffset = c.offset
        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(pending.count)
        for t in pending {
            let absolute = dataOffset + t.relativeOffset   // both bounded well below Int.max
            guard absolute <= count, t.byteCount <= count - absolute else {
                // The end is printed in UInt64: a lying byte count can push it past Int.max.
                let end = UInt64(absolute) + UInt64(t.byteCount)
                throw c.error("tensor \(shown(t.name)) (\(t.type.name), dims \(t.dims)) needs bytes \(absolute)..<\(end) "
                              + "but the file has \(count) bytes", at: t.infoOffset)
            }
            tensors.append(GGUFTensorInfo(name: t.name, type: t.type, dims: t.dims, offset: absolute,
                                          byteCount: t.byteCount, elementCount: t.elementCount))
        }
        // ggml lays tensors out back to back; overlapping data means a corrupt or crafted tensor directory.
        let byStart = tensors.indices.filter { tensors[$0].byteCount > 0 }.sorted { tensors[$0].offset < tensors[$1].offset }
        for (a, b) in zip(byStart, byStart.dropFirst()) where tensors[a].offset + tensors[a].byteCount > tensors[b].offset {
            throw c.error("tensor \(shown(tensors[b].name)) (bytes \(tensors[b].offset)..<\(tensors[b].offset + tensors[b].byteCount)) "
                          + "overlaps tensor \(shown(tensors[a].name)) (bytes \(tensors[a].offset)..<"
                          + "\(tensors[a].offset + tensors[a].byteCount))", at: pending[b].infoOffset)
        }
        return GGUFHeader(version: version, alignment: alignment, metadata: metadata, metadataKeys: keys,
                          tensors: tensors, dataOffset: dataOffset)
    }

    private static func readValue(_ c: inout GGUFByteCursor, _ type: GGUFValueType, depth: Int, budget: inout Int,
                                  context: @autoclosure () -> String) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try c.load(UInt8.self, context()))
        case .int8: return .int8(try c.load(Int8.self, context()))
        case .uint16: return .uint16(try c.load(UInt16.self, context()))
        case .int16: return .int16(try c.load(Int16.self, context()))
        case .uint32: return .uint32(try c.load(UInt32.self, context()))
        case .int32: return .int32(try c.load(Int32.self, context()))
        case .uint64: return .uint64(try c.load(UInt64.self, context()))
        case .int64: return .int64(try c.load(Int64.self, context()))
        case .float32: return .float32(Float(bitPattern: try c.load(UInt32.self, context())))
        case .float64: return .float64(Double(bitPattern: try c.load(UInt64.self, context())))
        case .bool: return .bool(try c.u8(context()) != 0)   // like ggml: any non-zero byte is true
        case .string: return .string(try c.string(context()))
        case .array:
            let typeOffset = c.offset
            let rawElementType = try c.u32("element type of \(context())")
            guard let elementType = GGUFValueType(rawValue: rawElementType) else {
                throw c.error("\(context()): array has unknown element type \(rawElementType) (known: 0-12)", at: typeOffset)
            }
            guard elementType != .array || depth + 1 < maxArrayNesting else {
                throw c.error("\(context()): arrays nested more than \(maxArrayNesting) deep", at: typeOffset)
            }
            let countOffset = c.offset
            let n = try c.count("element count of \(context())", minimumBytesEach: elementType.minimumEncodedSize)
            guard n <= budget else {
                throw c.error("\(context()): array of \(n) elements exceeds what is left of the reader's limit of "
                              + "\(maxMetadataArrayElements) metadata array elements per file", at: countOffset)
            }
            budget -= n
            var items: [GGUFValue] = []
            items.reserveCapacity(elementType.fixedSize != nil ? n : min(n, 1 << 16))   // fixed-size: bytes checked
            if let size = elementType.fixedSize {
                // The count check above already guarantees n * size bytes remain.
                for _ in 0..<n { items.append(scalar(elementType, c.base + c.offset)); try c.skip(size) }
            } else {
                for i in 0..<n {
                    items.append(try readValue(&c, elementType, depth: depth + 1, budget: &budget,
                                             context: "\(context())[\(i)]"))
                }
            }
            return .array(items)
        }
    }

    /// Decodes a fixed-size scalar whose bytes are known to be in bounds.
    @inline(__always)
    private static func scalar(_ type: GGUFValueType, _ p: UnsafeRawPointer) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(p.load(as: UInt8.self))
        case .int8: return .int8(p.load(as: Int8.self))
        case .uint16: return .uint16(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
        case .int16: return .int16(Int16(littleEndian: p.loadUnaligned(as: Int16.self)))
        case .uint32: return .uint32(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
        case .int32: return .int32(Int32(littleEndian: p.loadUnaligned(as: Int32.self)))
        case .uint64: return .uint64(UInt64(littleEndian: p.loadUnaligned(as: UInt64.self)))
        case .int64: return .int64(Int64(littleEndian: p.loadUnaligned(as: Int64.self)))
        case .float32: return .float32(Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))))
        case .float64: return .float64(Double(bitPattern: UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))))
        case .bool: return .bool(p.load(as: UInt8.self) != 0)
        case .string, .array: return .array([])   // not reached: callers pass fixed-size types only
        }
    }

    /// A key or name as quoted in error messages: clipped, control characters replaced, so a corrupt file cannot
    /// produce megabyte-long or terminal-mangling messages.
    static func shown(_ s: String) -> String {
        let limit = 80
        let clipped = s.unicodeScalars.prefix(limit).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : String($0) }.joined()
        return "'" + clipped + (s.unicodeScalars.count > limit ? "…" : "") + "'"
    }

    private static func hex2(_ b: UInt8) -> String {
        let s = String(b, radix: 16, uppercase: true)
        return s.count == 1 ? "0" + s : s
    }
}
