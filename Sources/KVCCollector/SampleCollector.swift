import Dispatch
import KVCBackbone
import KVCCollect
import KVCCore
import KVCVision

/// Runs the frozen VLM over one prompt and keeps what the capsule trainer needs: the vision span's keys and values
/// exactly as the float16 `PlainKVCache` holds them, and the post-RoPE queries of the text after the last image.
///
/// The forward calls are exactly those of generation (`VisionLanguageModel.answer` without a hook): the whole
/// prompt (same pieces, same tokenization) in one prefill call, then one single-token step for the first answer
/// token, here the expected answer's (teacher forcing, so the queries do not depend on how good the front end is).
/// The decoder's query observer hands over the queries of both calls, so the stored keys, values and queries are
/// bit for bit what generation computes and attends to (a batched call over a different number of rows may round
/// differently, which is why the answer token is not simply appended to the prefill).
public final class SampleCollector {
    public let vlm: VisionLanguageModel
    public var layout: CacheLayout {
        let c = vlm.backbone.model.config
        return CacheLayout(layers: c.layerCount, kvHeads: c.kvHeadCount, queryHeads: c.headCount, headDim: c.headDim)
    }

    /// Seconds spent per phase, summed over every `collect` call.
    public struct Timing: Sendable {
        public var frontEnd = 0.0
        public var forward = 0.0
        public var extract = 0.0
    }
    public private(set) var timing = Timing()

    public init(vlm: VisionLanguageModel) { self.vlm = vlm }

    /// A prompt that cannot be collected, with the reason (recorded as a skip, not an error).
    public struct Unusable: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// Collects one sample.
    /// - Throws: `Unusable` when the prompt cannot be run (longer than the context, empty answer); other errors
    ///   are the decoder's.
    public func collect(id: String, images: [Image], question: String, answer: String,
                        info: [String: String] = [:]) throws -> CacheSample {
        precondition(!images.isEmpty, "SampleCollector.collect: a sample needs at least one image")
        let model = vlm.backbone.model, c = model.config, tokenizer = vlm.backbone.tokenizer
        guard let answerToken = vlm.prompt.answer(answer, tokenizer: tokenizer).first else {
            throw Unusable(reason: "answer '\(answer)' has no tokens")
        }
        let t0 = DispatchTime.now()
        let embeddings = try vlm.imageEmbeddings(images, question: question)
        let t1 = DispatchTime.now()
        let prefix = vlm.prefix(imageEmbeddings: embeddings)
        let suffix = vlm.suffix(question: question)
        let length = prefix.length + suffix.positionCount + 1
        guard length <= c.contextLength else {
            throw Unusable(reason: "prompt of \(length) tokens exceeds the context length of \(c.contextLength)")
        }
        let lastGrid = prefix.grids[prefix.grids.count - 1]
        let textStart = lastGrid.start + lastGrid.count
        let textCount = length - textStart

        let cache = model.makeCache(precision: .float16, initialCapacity: length)
        var queries = [UInt16](repeating: 0, count: c.layerCount * c.headCount * textCount * c.headDim)
        let logits = try queries.withUnsafeMutableBufferPointer { out -> [Float] in
            let base = out.baseAddress!
            let observe: LlamaModel.QueryObserver = { layer, q, count, first in
                copyQueries(q, count: count, firstPosition: first, from: textStart, textCount: textCount,
                            layer: layer, config: c, into: base)
            }
            let logits = try model.forward(prefix.pieces + suffix, cache: cache, logits: .last,
                                           observeQueries: observe)
            _ = try model.forward(embeddings: model.embed(tokens: [answerToken]), cache: cache, logits: .none,
                                  observeQueries: observe)
            return logits
        }
        let t2 = DispatchTime.now()
        let vision = prefix.visionPositions
        let (keys, values) = visionSpan(of: cache, grids: prefix.grids, count: vision.count, config: c)
        let predicted = argmax(logits)
        var info = info
        info["question"] = question
        info["answer"] = answer
        info["answer_token"] = String(answerToken)
        info["predicted_token"] = String(predicted)
        info["prompt_tokens"] = String(length)
        var offset = 0
        let grids = prefix.grids.map { g -> ImageGrid in
            defer { offset += g.count }
            return ImageGrid(start: offset, rows: g.rows, cols: g.cols)
        }
        let sample = CacheSample(id: id, grids: grids, visionPositions: vision,
                                 textPositions: (textStart..<length).map { Int32($0) },
                                 keys: keys, values: values, queries: queries, info: info)
        let t3 = DispatchTime.now()
        timing.frontEnd += seconds(t0, t1)
        timing.forward += seconds(t1, t2)
        timing.extract += seconds(t2, t3)
        return sample
    }
}

/// Copies the rows of one layer's queries `[count][heads * d]` (positions `first ..< first + count`) that fall in
/// the text span `textStart ..< textStart + textCount` into `out`, laid out `[layers][heads][textCount][d]` float16.
fileprivate func copyQueries(_ q: UnsafePointer<Float>, count: Int, firstPosition first: Int, from textStart: Int,
                             textCount: Int, layer: Int, config c: LlamaConfig, into out: UnsafeMutablePointer<UInt16>) {
    let d = c.headDim
    let lo = max(first, textStart), hi = min(first + count, textStart + textCount)
    guard lo < hi else { return }
    for position in lo..<hi {
        let row = q + (position - first) * c.queryDim
        let t = position - textStart
        for h in 0..<c.headCount {
            HalfConversion.floatToHalf(row + h * d, out + ((layer * c.headCount + h) * textCount + t) * d, count: d)
        }
    }
}

/// The float16 bits a plain cache holds for the image tokens, `[layers][kvHeads][N][d]` (images in prompt order).
fileprivate func visionSpan(of cache: PlainKVCache, grids: [ImageGrid], count n: Int,
                            config c: LlamaConfig) -> (keys: [UInt16], values: [UInt16]) {
    let d = c.headDim, total = c.layerCount * c.kvHeadCount * n * d
    var keys = [UInt16](repeating: 0, count: total), values = [UInt16](repeating: 0, count: total)
    keys.withUnsafeMutableBufferPointer { kOut in
        values.withUnsafeMutableBufferPointer { vOut in
            for layer in 0..<c.layerCount {
                cache.withLayer(layer) { view in
                    guard case .float16(let k, let v) = view.storage else {
                        preconditionFailure("SampleCollector: the collection cache must be float16")
                    }
                    let kSrc = UnsafeRawPointer(k).assumingMemoryBound(to: UInt16.self)
                    let vSrc = UnsafeRawPointer(v).assumingMemoryBound(to: UInt16.self)
                    for h in 0..<c.kvHeadCount {
                        var dst = ((layer * c.kvHeadCount + h) * n) * d
                        for g in grids {
                            let src = h * view.headStride + g.start * d
                            (kOut.baseAddress! + dst).update(from: kSrc + src, count: g.count * d)
                            (vOut.baseAddress! + dst).update(from: vSrc + src, count: g.count * d)
                            dst += g.count * d
                        }
                    }
                }
            }
        }
    }
    return (keys, values)
}

fileprivate func argmax<C: Collection>(_ xs: C) -> Int where C.Element == Float {
    var best = 0, bestValue = -Float.infinity
    for (i, x) in xs.enumerated() where x > bestValue {
        best = i
        bestValue = x
    }
    return best
}

fileprivate func seconds(_ a: DispatchTime, _ b: DispatchTime) -> Double {
    Double(b.uptimeNanoseconds - a.uptimeNanoseconds) / 1e9
}
