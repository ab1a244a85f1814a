import Foundation
import KVCCore
import KVCTensor

/// The trained vision front end: encoder + projector. Turns images into image tokens in the decoder's embedding
/// space, with the grid shape they came from. Saved as one safetensors file (`encoder.*`, `projector.*`) whose
/// metadata holds both configs, the projector's output scale and the fingerprint of the decoder it was aligned to.
public final class FrontEnd: Module {
    public let encoder: VisionEncoder
    public let projector: Projector
    /// Fingerprint of the decoder the projector was aligned to (empty before alignment).
    public var backboneFingerprint: String

    public static let checkpointKind = "kvc-front-end"

    public init(encoder: VisionEncoder, projector: Projector, backboneFingerprint: String = "") {
        self.encoder = encoder
        self.projector = projector
        self.backboneFingerprint = backboneFingerprint
    }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        encoder.namedParameters.map { ("encoder.\($0.name)", $0.tensor) }
            + projector.namedParameters.map { ("projector.\($0.name)", $0.tensor) }
    }

    public var tokensPerImage: Int { encoder.config.tokenCount }
    public var gridSide: Int { encoder.config.gridSide }

    /// Image tokens `[images, tokensPerImage, hidden]` for normalised pixels `[images, 3, side, side]`.
    public func callAsFunction(_ pixels: Tensor) -> Tensor { projector(encoder(pixels).tokens) }

    /// Image tokens of decoded images, one `[tokensPerImage * hidden]` array per image (no gradients).
    public func embed(_ images: [Image]) -> [[Float]] {
        let t = Tensor.withNoGrad { self(encoder.pixelTensor(images)) }
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
        ])
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
        var rng = SeededRandom(seed: 0)
        let frontEnd = FrontEnd(encoder: try VisionEncoder(config: config, rng: &rng),
                                projector: Projector(inputDim: input, hiddenDim: hidden, outputDim: output,
                                                     outputScale: scale, rng: &rng),
                                backboneFingerprint: backbone)
        try frontEnd.load(from: path)
        return frontEnd
    }
}
