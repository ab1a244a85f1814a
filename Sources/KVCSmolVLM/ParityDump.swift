import Foundation
import KVCBackbone
import KVCCore
import KVCVision

/// One forward pass on exactly the given token ids, recorded for comparison with another implementation
/// (transformers): `logits` `[T, vocab]` and, per decoder layer `i`, `layers.i.key` / `layers.i.value`
/// `[kv_heads, T, head_dim]`, all float32.
///
/// Keys are after RoPE, as the cache holds them, and in **Hugging Face's** rotary layout: the decoder computes them in
/// GGUF's adjacent-pair layout (`HFRotaryLayout`), and the dump reorders each head vector back, so the file is
/// directly comparable with transformers' cache. The cache used is float32 (no float16 rounding).
public struct ParityDump {
    public var logits: [Float]
    public var keys: [[Float]]
    public var values: [[Float]]
    public var tokenCount: Int
    public var vocabularySize: Int
    public var kvHeads: Int
    public var headDim: Int

    /// Runs `model` on `tokenIds`, image-token positions filled with the tokens of `images` in order (their tiles and
    /// global images when the processor splits images).
    public static func run(model: SmolVLM, tokenIds: [Int], images: [Image]) throws -> ParityDump {
        guard !tokenIds.isEmpty else { throw KVCError("no token ids given") }
        let imageTokens = try model.imageInputs(for: images).flatMap(\.tokens)
        let (pieces, _) = try model.prompt(tokenIds: tokenIds, imageTokens: imageTokens)
        return try run(decoder: model.decoder, prompt: pieces)
    }

    /// Runs the decoder on a prompt and reads back its float32 cache.
    public static func run(decoder: LlamaModel, prompt: [PromptPiece]) throws -> ParityDump {
        let c = decoder.config
        let t = prompt.reduce(0) { $0 + $1.count }
        let cache = PlainKVCache(config: c, precision: .float32, initialCapacity: t)
        let logits = try decoder.forward(prompt, cache: cache, logits: .all)
        var keys: [[Float]] = [], values: [[Float]] = []
        for layer in 0..<c.layerCount {
            let (k, v) = cache.withLayer(layer) { view -> ([Float], [Float]) in
                guard case .float32(let kp, let vp) = view.storage else { preconditionFailure("float32 cache expected") }
                var k = [Float](), v = [Float]()
                k.reserveCapacity(c.kvHeadCount * t * c.headDim)
                v.reserveCapacity(c.kvHeadCount * t * c.headDim)
                for h in 0..<c.kvHeadCount {
                    k += UnsafeBufferPointer(start: kp + h * view.headStride, count: t * c.headDim)
                    v += UnsafeBufferPointer(start: vp + h * view.headStride, count: t * c.headDim)
                }
                return (k, v)
            }
            keys.append(HFRotaryLayout.ggufToHF(k, headDim: c.headDim))
            values.append(v)
        }
        return ParityDump(logits: logits, keys: keys, values: values, tokenCount: t, vocabularySize: c.vocabularySize,
                          kvHeads: c.kvHeadCount, headDim: c.headDim)
    }

    /// Writes the dump as safetensors (atomically).
    public func write(to path: String) throws {
        var writer = SafetensorsWriter(metadata: ["format": "kvc parity dump", "key_layout": "huggingface rotate_half, post-RoPE"])
        try writer.add("logits", floats: logits, shape: [tokenCount, vocabularySize])
        for (i, (k, v)) in zip(keys, values).enumerated() {
            try writer.add("layers.\(i).key", floats: k, shape: [kvHeads, tokenCount, headDim])
            try writer.add("layers.\(i).value", floats: v, shape: [kvHeads, tokenCount, headDim])
        }
        try writer.write(to: path)
    }
}
