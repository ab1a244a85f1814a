import KVCCore

/// How the next token is chosen, and when generation stops.
public struct GenerationParameters: Sendable, Equatable {
    public var maxTokens: Int
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it before sampling.
    public var temperature: Float
    /// Sample among the k most likely tokens (0 = no limit).
    public var topK: Int
    /// Then among the smallest set whose probabilities reach p (1 = no limit).
    public var topP: Float
    public var seed: UInt64
    /// Token ids that end generation (not included in the output). nil = the tokenizer's end-of-turn and eos.
    public var stopTokens: Set<Int>?

    public init(maxTokens: Int = 128, temperature: Float = 0.7, topK: Int = 40, topP: Float = 0.95, seed: UInt64 = 0,
                stopTokens: Set<Int>? = nil) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
        self.stopTokens = stopTokens
    }

    public static func greedy(maxTokens: Int = 128) -> GenerationParameters {
        GenerationParameters(maxTokens: maxTokens, temperature: 0, topK: 1, topP: 1)
    }

    public var isGreedy: Bool { temperature <= 0 || topK == 1 }

    /// - Throws: `KVCError` naming the parameter that is out of range.
    public func validate() throws {
        guard maxTokens >= 0 else { throw KVCError("max tokens must be >= 0, got \(maxTokens)") }
        guard temperature >= 0, temperature.isFinite else { throw KVCError("temperature must be >= 0, got \(temperature)") }
        guard topK >= 0 else { throw KVCError("top-k must be >= 0, got \(topK)") }
        guard topP > 0, topP <= 1 else { throw KVCError("top-p must be in (0, 1], got \(topP)") }
    }
}

/// Picks tokens from logits: greedy, or temperature / top-k / top-p sampling, deterministic under the seed.
public struct Sampler {
    public let parameters: GenerationParameters
    private var random: SeededRandom

    public init(_ parameters: GenerationParameters) {
        self.parameters = parameters
        random = SeededRandom(seed: parameters.seed)
    }

    public mutating func next(_ logits: [Float]) -> Int {
        logits.withUnsafeBufferPointer { next($0) }
    }

    public mutating func next(_ logits: UnsafeBufferPointer<Float>) -> Int {
        precondition(!logits.isEmpty, "Sampler: no logits")
        if parameters.isGreedy { return Self.argmax(logits) }
        // Candidates, most likely first: the top k, or every token.
        let k = parameters.topK > 0 ? min(parameters.topK, logits.count) : logits.count
        let candidates = Self.topIndices(logits, k)
        // Softmax over the candidates at the temperature (max subtracted for range).
        let maxLogit = logits[candidates[0]]
        var probs = candidates.map { expf((logits[$0] - maxLogit) / parameters.temperature) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        // Nucleus: keep the shortest prefix whose mass reaches p.
        var kept = probs.count
        if parameters.topP < 1 {
            var mass: Float = 0
            for i in probs.indices {
                mass += probs[i]
                if mass >= parameters.topP { kept = i + 1; break }
            }
        }
        let keptMass = probs[..<kept].reduce(0, +)
        let u = random.nextUniform() * keptMass
        var acc: Float = 0
        for i in 0..<kept {
            acc += probs[i]
            if u < acc { return candidates[i] }
        }
        return candidates[kept - 1]
    }

    public static func argmax(_ x: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        for i in 1..<x.count where x[i] > x[best] { best = i }
        return best
    }

    /// Indices of the k largest values, largest first (ties: lower index first).
    static func topIndices(_ x: UnsafeBufferPointer<Float>, _ k: Int) -> [Int] {
        if k >= x.count / 4 {
            return Array((0..<x.count).sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }.prefix(k))
        }
        // Keep a sorted list of the best k; most values fail the comparison with the current k-th.
        var best: [Int] = []
        best.reserveCapacity(k + 1)
        for i in 0..<x.count {
            if best.count == k, x[i] <= x[best[k - 1]] { continue }
            var lo = 0, hi = best.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if x[best[mid]] >= x[i] { lo = mid + 1 } else { hi = mid }
            }
            best.insert(i, at: lo)
            if best.count > k { best.removeLast() }
        }
        return best
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
