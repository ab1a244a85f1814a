/// An optional capability of a `KVCache`: computing a layer's attention itself, from whatever form it stores, instead
/// of handing attention a dense `KVLayerView`.
///
/// The decoder asks for it before calling the attention kernel; a cache that answers `false` (or does not conform)
/// gets the ordinary path (`withLayer` + the shared kernel), so every other cache runs exactly the code it always did.
/// The capsule cache uses it for its fused mode (DESIGN §2.1): scores and value sums straight from retained keys and
/// value factors, with nothing rebuilt. The batched decoder uses it to route each row of a batch to its own cache.
public protocol FusedAttentionCache: KVCache {
    /// Attention of `count` new queries of `layer` over everything the layer holds, or `false` to decline.
    ///
    /// Called after `append(layer:...)` of the same forward call, with the same contract as the kernel: queries are
    /// row-major `[count][headCount * headDim]` (rotated) at positions `firstPosition ..< firstPosition + count`, a
    /// query at position p sees entries at positions <= p, heads are grouped over `kvHeadCount` (query head `i` uses
    /// KV head `i / (headCount / kvHeadCount)`), and `output` has the queries' layout. `threads` may be used for the
    /// work of this call. When declining, the cache must not have written to `output`.
    func attend(layer: Int, queries: UnsafePointer<Float>, count: Int, firstPosition: Int, headCount: Int,
                output: UnsafeMutablePointer<Float>, threads: Int) -> Bool
}

extension KVCache {
    /// One layer's attention the way the decoder computes it: the cache's own fused path when it has one and takes
    /// the call, otherwise the shared kernel over the cache's dense view.
    func attention(layer: Int, queries: UnsafePointer<Float>, count: Int, firstPosition: Int, headCount: Int,
                   output: UnsafeMutablePointer<Float>, threads: Int) {
        if let fused = self as? FusedAttentionCache,
           fused.attend(layer: layer, queries: queries, count: count, firstPosition: firstPosition, headCount: headCount,
                        output: output, threads: threads) {
            return
        }
        withLayer(layer) { view in
            AttentionKernel.run(queries: queries, count: count, firstPosition: firstPosition, view: view,
                                headCount: headCount, kvHeadCount: kvHeadCount, headDim: headDim, output: output,
                                threads: threads)
        }
    }
}
