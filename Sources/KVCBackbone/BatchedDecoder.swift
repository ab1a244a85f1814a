import KVCCore

extension LlamaModel {
    /// One decoding step of several sequences together: `tokens[i]` is appended to sequence `i`, whose cache is
    /// `caches[i]`, at position `caches[i].length`. Returns the next-token logits, row-major `[sequences][vocabulary]`.
    ///
    /// The sequences share every weight product of the step (`BlockMatMat` reads each stored block once for several
    /// sequences instead of once per sequence), while each attends over its own cache — plain, capsule (dense or
    /// fused) or any other `KVCache`, mixed freely, at different lengths. The products sum in the single-stream order,
    /// so each sequence's logits equal decoding it alone.
    /// - Throws: `KVCError` for a token outside the vocabulary, a cache given twice, or a sequence at the context length.
    public func decodeStep(tokens: [Int], caches: [KVCache]) throws -> [Float] {
        guard tokens.count == caches.count, !tokens.isEmpty else {
            throw KVCError("batched decode: \(tokens.count) tokens for \(caches.count) caches (need one per sequence)")
        }
        return try forward(batch: embed(tokens: tokens), caches: caches)
    }

    /// `decodeStep` for rows of embeddings `[sequences][hiddenSize]` (one new position per sequence).
    public func forward(batch embeddings: [Float], caches: [KVCache]) throws -> [Float] {
        let b = caches.count
        precondition(embeddings.count == b * config.hiddenSize, "forward(batch:): embeddings are not one row per cache")
        guard Set(caches.map { ObjectIdentifier($0) }).count == b else {
            throw KVCError("batched decode: the same cache appears twice in the batch (each sequence needs its own)")
        }
        for (i, cache) in caches.enumerated() {
            precondition(cache.layerCount == config.layerCount && cache.kvHeadCount == config.kvHeadCount
                         && cache.headDim == config.headDim, "forward(batch:): cache \(i) is shaped for another model")
            guard cache.length < config.contextLength else {
                throw KVCError("batched decode: sequence \(i) holds \(cache.length) positions, the model's context length")
            }
        }
        let router = BatchRouter(caches: caches, threads: threads)
        return embeddings.withUnsafeBufferPointer {
            run(embeddings: $0.baseAddress!, positions: router.positions, cache: router, logits: .all, rowsAreSequences: true)
        }
    }
}

/// The cache a batched forward call sees: row `i` of every append and every attention goes to sequence `i`'s cache.
/// It has no dense view of its own, so attention always takes the `FusedAttentionCache` route.
private final class BatchRouter: FusedAttentionCache {
    let caches: [KVCache]
    /// Position of each sequence's new token (its length before the step).
    let positions: [Int]
    let threads: Int
    let layerCount: Int
    let kvHeadCount: Int
    let headDim: Int

    init(caches: [KVCache], threads: Int) {
        self.caches = caches
        positions = caches.map(\.length)
        self.threads = threads
        layerCount = caches[0].layerCount
        kvHeadCount = caches[0].kvHeadCount
        headDim = caches[0].headDim
    }

    var length: Int { positions[0] }
    var residentBytes: Int { caches.reduce(0) { $0 + $1.residentBytes } }

    /// Keys and values arrive head-major over the batch, `[kvHeads][sequences][headDim]`; each sequence gets its row.
    func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count: Int) {
        precondition(count == caches.count, "BatchRouter.append: \(count) rows for \(caches.count) sequences")
        let d = headDim, width = kvHeadCount * d
        let rowKeys = UnsafeMutablePointer<Float>.allocate(capacity: 2 * width)
        defer { rowKeys.deallocate() }
        let rowValues = rowKeys + width
        for (i, cache) in caches.enumerated() {
            for h in 0..<kvHeadCount {
                (rowKeys + h * d).update(from: keys + (h * count + i) * d, count: d)
                (rowValues + h * d).update(from: values + (h * count + i) * d, count: d)
            }
            cache.append(layer: layer, keys: rowKeys, values: rowValues, count: 1)
        }
    }

    func withLayer<R>(_ layer: Int, _ body: (KVLayerView) throws -> R) rethrows -> R {
        preconditionFailure("BatchRouter has no single view: the batch's attention goes through attend")
    }

    func trim(to length: Int) { preconditionFailure("BatchRouter: trim each sequence's own cache") }

    /// Each sequence attends over its own cache. Whole rounds of sequences go one per thread (one thread each
    /// inside); the sequences left over when the batch is not a multiple of the threads (a batch of one among them)
    /// attend one after another with all the threads (each cache splits its heads), so three sequences on two threads
    /// take about 1.7 sequences' time instead of 2.
    func attend(layer: Int, queries: UnsafePointer<Float>, count: Int, firstPosition: Int, headCount: Int,
                output: UnsafeMutablePointer<Float>, threads: Int) -> Bool {
        let rowStride = headCount * headDim
        func perform(_ i: Int, threads: Int) {
            caches[i].attention(layer: layer, queries: queries + i * rowStride, count: 1, firstPosition: positions[i],
                                headCount: headCount, output: output + i * rowStride, threads: threads)
        }
        let lanes = min(threads, count)
        let paired = lanes > 1 ? count - count % lanes : 0
        if paired > 0 {
            DecodeThreadPool.shared(threads: lanes).run(chunks: paired) { perform($0, threads: 1) }
        }
        // The leftovers, a batch of one among them, get every thread, as in single-stream decoding.
        for i in paired..<count { perform(i, threads: threads) }
        return true
    }
}
