import KVCCore

/// The shape of one backbone's KV cache, as stored in every shard and checked on read.
public struct CacheLayout: Codable, Equatable, Sendable {
    public var layers: Int
    public var kvHeads: Int
    public var queryHeads: Int
    public var headDim: Int

    public init(layers: Int, kvHeads: Int, queryHeads: Int, headDim: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.queryHeads = queryHeads
        self.headDim = headDim
    }

    enum CodingKeys: String, CodingKey {
        case layers, kvHeads = "kv_heads", queryHeads = "query_heads", headDim = "head_dim"
    }
}

/// One image's tokens inside the vision span: `rows x cols` tokens in row-major order starting at `start`.
public struct ImageGrid: Codable, Equatable, Sendable {
    public var start: Int
    public var rows: Int
    public var cols: Int
    public var count: Int { rows * cols }

    public init(start: Int, rows: Int, cols: Int) {
        self.start = start
        self.rows = rows
        self.cols = cols
    }
}

/// What the frozen backbone cached for the image tokens of one prompt, plus the text queries that attend to them.
/// Tensors hold float16 bit patterns, exactly as the cache keeps them.
public struct CacheSample: Equatable, Sendable {
    public var id: String
    public var grids: [ImageGrid]
    /// Sequence positions of the N vision tokens (the RoPE positions their keys were rotated with).
    public var visionPositions: [Int32]
    /// Sequence positions of the T text tokens after the image whose queries are stored.
    public var textPositions: [Int32]
    /// Post-RoPE keys, `[layers, kvHeads, N, headDim]`.
    public var keys: [UInt16]
    /// Values, `[layers, kvHeads, N, headDim]`.
    public var values: [UInt16]
    /// Post-RoPE queries of the text tokens, `[layers, queryHeads, T, headDim]`.
    public var queries: [UInt16]
    /// Free-form facts about the prompt (question, expected answer, image ids).
    public var info: [String: String]

    public var visionCount: Int { visionPositions.count }
    public var textCount: Int { textPositions.count }

    public init(id: String, grids: [ImageGrid], visionPositions: [Int32], textPositions: [Int32],
                keys: [UInt16], values: [UInt16], queries: [UInt16], info: [String: String] = [:]) {
        self.id = id
        self.grids = grids
        self.visionPositions = visionPositions
        self.textPositions = textPositions
        self.keys = keys
        self.values = values
        self.queries = queries
        self.info = info
    }

    /// Stored bytes of the tensors (keys, values, queries and positions).
    public var byteCount: Int { 2 * (keys.count + values.count + queries.count) + 4 * (visionPositions.count + textPositions.count) }

    /// Checks that every tensor matches the layout and the grids tile the vision span; the message names the field.
    public func validate(against layout: CacheLayout) throws -> Void {
        let n = visionCount, t = textCount
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw KVCError("sample '\(id)': \(what)") }
        }
        try check(keys.count == layout.layers * layout.kvHeads * n * layout.headDim,
                  "keys hold \(keys.count) values, expected layers x kv_heads x N x head_dim = "
                  + "\(layout.layers) x \(layout.kvHeads) x \(n) x \(layout.headDim)")
        try check(values.count == keys.count, "values hold \(values.count) values, expected \(keys.count)")
        try check(queries.count == layout.layers * layout.queryHeads * t * layout.headDim,
                  "queries hold \(queries.count) values, expected layers x heads x T x head_dim = "
                  + "\(layout.layers) x \(layout.queryHeads) x \(t) x \(layout.headDim)")
        var cursor = 0
        for g in grids {
            try check(g.start == cursor && g.rows > 0 && g.cols > 0,
                      "grid \(g) does not continue the vision span at token \(cursor)")
            cursor += g.count
        }
        try check(cursor == n, "grids cover \(cursor) tokens, the vision span has \(n)")
        // A NaN or infinity in a cache would poison every fit trained on it; name where it sits.
        for (name, bits, heads, tokens) in [("keys", keys, layout.kvHeads, n), ("values", values, layout.kvHeads, n),
                                            ("queries", queries, layout.queryHeads, t)] {
            guard let i = bits.firstIndex(where: { $0 & 0x7C00 == 0x7C00 }) else { continue }
            let perLayer = heads * tokens * layout.headDim, perHead = tokens * layout.headDim
            try check(false, "\(name) hold a non-finite float16 (bits 0x\(String(bits[i], radix: 16))) at layer "
                      + "\(i / perLayer), head \((i % perLayer) / perHead), token \((i % perHead) / layout.headDim)")
        }
    }
}
