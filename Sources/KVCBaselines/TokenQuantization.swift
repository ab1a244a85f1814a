import KVCCore

/// Per-token symmetric quantization of the span's keys and values (KIVI/KVQuant-style baselines without outlier
/// handling): each token's vector, in groups of `groupSize` elements, is stored as `bits`-bit integer codes and one
/// float16 scale per group (absolute maximum / largest code). Every token stays in attention.
///
/// The ratio is fixed by the format: int8 with one scale per 64-d vector keeps 66 of 128 bytes (r = 0.484); int4
/// with a scale per 32 elements keeps 36 (r = 0.719). Codes are rebuilt to float16 once, for attention to read.
public struct TokenQuantization: SpanCompressor {
    public let bits: Int
    public let groupSize: Int
    public let headDim: Int

    /// `bits` 8 or 4; `groupSize` divides `headDim` (nil: the whole vector).
    public init(bits: Int, groupSize: Int? = nil, headDim: Int) throws {
        guard bits == 8 || bits == 4 else { throw KVCError("quantization: \(bits) bits (supported: 8, 4)") }
        let g = groupSize ?? headDim
        guard g > 0, headDim % g == 0 else { throw KVCError("quantization: group size \(g) does not divide head dim \(headDim)") }
        self.bits = bits
        self.groupSize = g
        self.headDim = headDim
    }

    public var name: String { "int\(bits)" }
    public var scoring: AttentionScoring? { nil }
    /// Bytes per stored vector: codes plus one float16 scale per group.
    public var vectorBytes: Int { headDim * bits / 8 + 2 * (headDim / groupSize) }
    public var ratio: Double { 1 - Double(vectorBytes) / Double(2 * headDim) }
    private var largestCode: Float { Float((1 << (bits - 1)) - 1) }

    public func compress(_ span: VisionSpan) throws -> CompressedSpan {
        guard span.headDim == headDim else { throw KVCError("\(name): head dim \(span.headDim), configured for \(headDim)") }
        let rows = span.kvHeads * span.tokens
        var bytes = 0
        let keys = roundTrip(span.keys, rows: rows, bytes: &bytes)
        let values = roundTrip(span.values, rows: rows, bytes: &bytes)
        return CompressedSpan(kept: Array(0..<span.tokens), keys: keys, values: values, bytes: bytes)
    }

    /// Quantizes `rows` vectors and rebuilds them as attention reads them; adds the encoded size to `bytes`.
    public func roundTrip(_ x: [Float], rows: Int, bytes: inout Int) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        var codes = [Int8](repeating: 0, count: groupSize)
        var scales: [UInt16] = []
        scales.reserveCapacity(rows * headDim / groupSize)
        for start in stride(from: 0, to: rows * headDim, by: groupSize) {
            var peak: Float = 0
            for e in 0..<groupSize { peak = max(peak, abs(x[start + e])) }
            // The scale is stored in float16: quantize against the rounded scale the reader will use.
            let stored = HalfConversion.floatToHalf([peak / largestCode])[0]
            let scale = HalfConversion.halfToFloat([stored])[0]
            scales.append(stored)
            let inverse: Float = scale > 0 ? 1 / scale : 0
            for e in 0..<groupSize {
                codes[e] = Int8(max(-largestCode, min(largestCode, (x[start + e] * inverse).rounded())))
                out[start + e] = Float(codes[e]) * scale
            }
        }
        bytes += rows * headDim * bits / 8 + 2 * scales.count
        return out
    }
}
