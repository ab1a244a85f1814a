/// A cache that wants to see the queries of the forward calls that fill it: score-based eviction baselines
/// (H2O, SnapKV, FastV) rank tokens by the attention they receive during prefill, which needs the queries that
/// the `KVCache` protocol alone never shows. Callers that prefill a prompt pass `queryObserver` to
/// `LlamaModel.forward(observeQueries:)`; nil means the cache has nothing to observe (any more).
public protocol QueryObservingCache: KVCache {
    var queryObserver: LlamaModel.QueryObserver? { get }
}
