/// Deterministic random numbers: the same seed gives the same stream on every machine
/// (SplitMix64 state, Box-Muller normals), so training is bit-identical under a seed.
public struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    private var spareNormal: Float?

    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }

    /// The whole generator state (SplitMix64 word, cached spare normal), so a checkpoint can continue the stream.
    public var checkpointState: [UInt64] {
        [state, spareNormal.map { UInt64($0.bitPattern) } ?? UInt64.max]
    }

    /// Continues the stream saved by `checkpointState`; nil if `words` is not such a state.
    public init?(checkpointState words: [UInt64]) {
        guard words.count == 2, words[1] == UInt64.max || words[1] <= UInt64(UInt32.max) else { return nil }
        state = words[0]
        spareNormal = words[1] == UInt64.max ? nil : Float(bitPattern: UInt32(words[1]))
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextUniform() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }

    /// Standard normal.
    public mutating func nextNormal() -> Float {
        if let s = spareNormal { spareNormal = nil; return s }
        var u1 = nextUniform()
        while u1 <= 1e-7 { u1 = nextUniform() }
        let u2 = nextUniform()
        let r = (-2 * _log(u1)).squareRoot()
        let theta = 2 * Float.pi * u2
        spareNormal = r * _sin(theta)
        return r * _cos(theta)
    }

    /// A uniform integer in 0..<n.
    public mutating func nextInt(below n: Int) -> Int { Int(next() % UInt64(n)) }

    /// Fisher-Yates, deterministic under the seed.
    public mutating func shuffle<T>(_ a: inout [T]) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, nextInt(below: i + 1)) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
@inline(__always) private func _log(_ x: Float) -> Float { logf(x) }
@inline(__always) private func _sin(_ x: Float) -> Float { sinf(x) }
@inline(__always) private func _cos(_ x: Float) -> Float { cosf(x) }
