import Foundation
import KVCCore
import KVCTensor

/// The trained vision front end: encoder + projector. Turns images into image tokens in the decoder's embedding
/// space, with the grid shape they came from. Saved as one safetensors file (`encoder.*`, `projector.*`) whose
/// metadata holds both configs, the projector's output scale and the fingerprint of the decoder it was aligned to.
/// A front end with `conditioning` (`conditioning.*`) reads the question too: its image tokens are made for one
/// question (`QuestionConditioning`).
public final class FrontEnd: Module {
    public let encoder: VisionEncoder
    public let projector: Projector
    /// Instruction-aware offsets of the image tokens (nil: the tokens depend on the image alone).
    public var conditioning: QuestionConditioning?
    /// Fingerprint of the decoder the projector was aligned to (empty before alignment).
    public var backboneFingerprint: String

    public static let checkpointKind = "kvc-front-end"
    /// The default VLM's front end, relative to the package root: stage 3 (`recipes/frontend-easyvqa-instruct.yaml`),
    /// whose image tokens read the question.
    public static let defaultCheckpoint = "checkpoints/frontend-easyvqa-instruct.safetensors"

    public init(encoder: VisionEncoder, projector: Projector, conditioning: QuestionConditioning? = nil,
                backboneFingerprint: String = "") {
        self.encoder = encoder
        self.projector = projector
        self.conditioning = conditioning
        self.backboneFingerprint = backboneFingerprint
    }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        encoder.namedParameters.map { ("encoder.\($0.name)", $0.tensor) }
            + projector.namedParameters.map { ("projector.\($0.name)", $0.tensor) }
            + (conditioning?.namedParameters.map { ("conditioning.\($0.name)", $0.tensor) } ?? [])
    }

    public var tokensPerImage: Int { encoder.config.tokenCount }
    public var gridSide: Int { encoder.config.gridSide }

    /// Image tokens `[images, tokensPerImage, hidden]` for normalised pixels `[images, 3, side, side]`, without the
    /// question (for a front end with `conditioning`: the tokens before their question's offset).
    public func callAsFunction(_ pixels: Tensor) -> Tensor { projector(encoder(pixels).tokens) }

    /// Image tokens for (image, question) pairs: `[pairs][tokensPerImage, hidden]`, each pair's image tokens plus
    /// its question's offset. `words` stacks the questions' word embeddings; each pair names its rows and its image.
    public func tokens(pixels: Tensor, words: Tensor, pairs: [(words: Range<Int>, image: Int)]) -> [Tensor] {
        let features = encoder(pixels)
        let plain = projector(features.tokens), width = plain.shape[2]
        let images = pairs.map { plain.slice(axis: 0, $0.image..<($0.image + 1)).reshaped([tokensPerImage, width]) }
        guard let conditioning else { return images }
        let offsets = conditioning.offsets(imageFeatures: features, words: words, pairs: pairs)
        return images.enumerated().map { p, image in image + offsets.slice(axis: 0, p..<(p + 1)).reshaped([width]) }
    }

    /// Whether the image tokens depend on the question (a front end with `conditioning`).
    public var readsQuestion: Bool { conditioning != nil }

    /// Image tokens of decoded images, one `[tokensPerImage * hidden]` array per image (no gradients). A front end
    /// that reads the question needs `question`; every image of the prompt gets its offset for that question.
    public func embed(_ images: [Image], question: QuestionWords?) -> [[Float]] {
        let pixels = encoder.pixelTensor(images)
        let t: Tensor = Tensor.withNoGrad {
            guard conditioning != nil, let question, question.count > 0, !images.isEmpty else { return self(pixels) }
            let words = Tensor(shape: [question.count, question.embeddings.count / question.count], values: question.embeddings)
            return Tensor.concat(tokens(pixels: pixels, words: words, pairs: images.indices.map { (0..<question.count, $0) }),
                                 axis: 0)
        }
        let per = t.count / max(images.count, 1)
        return (0..<images.count).map { Array(UnsafeBufferPointer(start: t.data + $0 * per, count: per)) }
    }

    public func save(to path: String) throws {
        let encoderConfig = try encoder.config.json()   // sorted keys: the same front end always writes the same bytes
        try save(to: path, dtype: .f32, metadata: [
            "kind": Self.checkpointKind, "encoder_config": encoderConfig,
            "projector": "{\"input\":\(projector.first.inFeatures),\"hidden\":\(projector.first.outFeatures),"
                + "\"output\":\(projector.second.outFeatures)}",
            "projector_scale": "\(projector.outputScale)", "backbone_fingerprint": backboneFingerprint,
        ].merging(conditioning.map { c in
            ["conditioning": "{\"hidden\":\(c.hidden),\"words\":\(c.wordDim)}"]
        } ?? [:]) { a, _ in a })
    }

    /// Loads a checkpoint written by `save`, refusing another kind of file or one aligned to another decoder.
    public static func load(from path: String, expectingBackbone fingerprint: String? = nil) throws -> FrontEnd {
        let file = try SafetensorsFile(path: path)
        let meta = file.metadata
        guard meta["kind"] == checkpointKind else {
            throw KVCError.file(path, "metadata kind is \(meta["kind"].map { "'\($0)'" } ?? "missing"), expected '\(checkpointKind)'")
        }
        guard let ej = meta["encoder_config"],
              let config = try? JSONDecoder().decode(VisionEncoderConfig.self, from: Data(ej.utf8)) else {
            throw KVCError.file(path, "metadata 'encoder_config' is missing or invalid")
        }
        try config.validate(source: path)
        guard let pj = meta["projector"], let dims = try? JSONDecoder().decode([String: Int].self, from: Data(pj.utf8)),
              let input = dims["input"], let hidden = dims["hidden"], let output = dims["output"],
              (1...65536).contains(input), (1...65536).contains(hidden), (1...65536).contains(output) else {
            throw KVCError.file(path, "metadata 'projector' must be {\"input\":N,\"hidden\":N,\"output\":N}")
        }
        guard let scale = meta["projector_scale"].flatMap(Float.init), scale.isFinite else {
            throw KVCError.file(path, "metadata 'projector_scale' is missing or not a finite number")
        }
        let backbone = meta["backbone_fingerprint"] ?? ""
        if let fingerprint, !backbone.isEmpty, backbone != fingerprint {
            throw KVCError.file(path, "front end was aligned to backbone \(backbone), this backbone is \(fingerprint)")
        }
        var conditioning: QuestionConditioning?
        var rng = SeededRandom(seed: 0)
        if let cj = meta["conditioning"] {
            guard let dims = try? JSONDecoder().decode([String: Int].self, from: Data(cj.utf8)),
                  let h = dims["hidden"], let words = dims["words"], (1...65536).contains(h), (1...65536).contains(words) else {
                throw KVCError.file(path, "metadata 'conditioning' must be {\"hidden\":N,\"words\":N}")
            }
            conditioning = QuestionConditioning(wordDim: words, imageDim: config.tokenDim, hidden: h, outputDim: output, rng: &rng)
        }
        let frontEnd = FrontEnd(encoder: try VisionEncoder(config: config, rng: &rng),
                                projector: Projector(inputDim: input, hiddenDim: hidden, outputDim: output,
                                                     outputScale: scale, rng: &rng),
                                conditioning: conditioning, backboneFingerprint: backbone)
        try frontEnd.load(from: path)
        return frontEnd
    }
}
