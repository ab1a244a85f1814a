import Foundation
import KVCCore
import KVCTensor

/// The shapes of a vision encoder. Stored in the checkpoint's metadata, so `VisionEncoder.load` rebuilds the right
/// network and a checkpoint for another grid or width is refused with the reason.
public struct VisionEncoderConfig: Codable, Equatable, Sendable {
    /// Images are resized to `imageSide` x `imageSide` before encoding.
    public var imageSide: Int
    /// Output channels of each 3x3 convolution; the last is the token width.
    public var channels: [Int]
    /// Stride of each convolution; their product divides `imageSide` into the token grid.
    public var strides: [Int]
    public var normalization: ImageNormalization

    public init(imageSide: Int = 64, channels: [Int] = [32, 64, 64, 128, 128], strides: [Int] = [1, 2, 2, 2, 1],
                normalization: ImageNormalization = .symmetric) {
        self.imageSide = imageSide
        self.channels = channels
        self.strides = strides
        self.normalization = normalization
    }

    /// DESIGN §3: five convolutions from 64x64 RGB to an 8x8 grid of 128-d tokens.
    public static let easyVQA = VisionEncoderConfig()

    public static let kernel = 3

    /// Canonical JSON (sorted keys), so the same config always writes the same checkpoint bytes.
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
    public var tokenDim: Int { channels.last ?? 0 }
    public var gridSide: Int { imageSide / strides.reduce(1, *) }
    public var tokenCount: Int { gridSide * gridSide }

    /// Checks the shapes are consistent; `source` names where the config came from in the error.
    public func validate(source: String) throws {
        guard !channels.isEmpty, channels.count == strides.count else {
            throw KVCError("\(source): encoder config has \(channels.count) channel counts and \(strides.count) strides; "
                           + "expected the same non-zero number")
        }
        guard channels.allSatisfy({ $0 > 0 && $0 <= 4096 }), strides.allSatisfy({ $0 >= 1 && $0 <= 4 }) else {
            throw KVCError("\(source): encoder config channels \(channels) / strides \(strides) out of range")
        }
        let total = strides.reduce(1, *)
        guard imageSide > 0, imageSide <= 1024, imageSide % total == 0, gridSide >= 1 else {
            throw KVCError("\(source): image side \(imageSide) is not a positive multiple (≤ 1024) of the total "
                           + "stride \(total)")
        }
        guard normalization.mean.count == 3, normalization.std.count == 3, normalization.std.allSatisfy({ $0 > 0 }) else {
            throw KVCError("\(source): encoder normalisation needs 3 means and 3 positive stds")
        }
    }
}

/// Image tokens with the grid they came from: `tokens` is [images, gridHeight * gridWidth, dim], and token
/// `y * gridWidth + x` covers grid cell (x, y). Consumers that use the 2-D neighbourhood read the grid from here.
public struct ImageTokens {
    public let tokens: Tensor
    public let gridHeight: Int
    public let gridWidth: Int

    public init(tokens: Tensor, gridHeight: Int, gridWidth: Int) {
        precondition(tokens.rank == 3 && tokens.shape[1] == gridHeight * gridWidth,
                     "ImageTokens: tokens \(tokens.shape) do not hold a \(gridHeight)x\(gridWidth) grid")
        self.tokens = tokens
        self.gridHeight = gridHeight
        self.gridWidth = gridWidth
    }

    public var imageCount: Int { tokens.shape[0] }
    public var tokensPerImage: Int { tokens.shape[1] }
    public var dim: Int { tokens.shape[2] }

    /// Each image's tokens pooled two ways, mean and max over the grid: `[images, 2 * dim]`. Both "how much of a
    /// colour" and "is there a corner anywhere" are linearly readable from it (the stage-1 head and the question
    /// conditioning read images this way).
    public var meanAndMax: Tensor { Tensor.concat([tokens.mean(axis: 1), tokens.max(axis: 1)], axis: 1) }
}

/// A small CNN that turns RGB images into a grid of tokens (DESIGN §3): 3x3 convolutions with ReLU between them
/// (none after the last, so tokens can take either sign), then a learned position embedding per grid cell.
/// Trained from scratch: stage 1 as a shape/colour classifier (`ShapeColourPretraining`), stage 2 through the
/// frozen decoder behind a projector.
///
/// Shape errors on the input tensor are programmer errors and trap (`precondition`); checkpoint problems throw.
public final class VisionEncoder: Module {
    public let config: VisionEncoderConfig
    public let convWeights: [Tensor]
    public let convBiases: [Tensor]
    /// [tokenCount, tokenDim]
    public let positionEmbedding: Tensor

    public static let checkpointKind = "kvc-vision-encoder"

    /// Fresh weights: He-normal convolutions (suited to ReLU without normalisation layers), zero biases, small
    /// random position embeddings.
    public init(config: VisionEncoderConfig = .easyVQA, rng: inout SeededRandom) throws {
        try config.validate(source: "VisionEncoder")
        self.config = config
        var weights: [Tensor] = [], biases: [Tensor] = []
        var inChannels = 3
        let k = VisionEncoderConfig.kernel
        for out in config.channels {
            let fanIn = Float(inChannels * k * k)
            weights.append(Tensor.randn([out, inChannels, k, k], std: (2 / fanIn).squareRoot(), rng: &rng,
                                        requiresGrad: true))
            biases.append(Tensor.zeros([out], requiresGrad: true))
            inChannels = out
        }
        convWeights = weights
        convBiases = biases
        positionEmbedding = Tensor.randn([config.tokenCount, config.tokenDim], std: 0.02, rng: &rng, requiresGrad: true)
    }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        var named: [(name: String, tensor: Tensor)] = []
        for (i, (w, b)) in zip(convWeights, convBiases).enumerated() {
            named.append(("conv.\(i).weight", w))
            named.append(("conv.\(i).bias", b))
        }
        named.append(("position_embedding", positionEmbedding))
        return named
    }

    /// Encodes normalised pixels [N, 3, imageSide, imageSide] into N grids of tokens.
    public func callAsFunction(_ pixels: Tensor) -> ImageTokens {
        let side = config.imageSide
        precondition(pixels.shape.count == 4 && Array(pixels.shape[1...]) == [3, side, side],
                     "VisionEncoder: input \(pixels.shape) is not [N, 3, \(side), \(side)]")
        var h = pixels
        for (i, (w, b)) in zip(convWeights, convBiases).enumerated() {
            h = conv2d(h, weight: w, bias: b, stride: config.strides[i], padding: VisionEncoderConfig.kernel / 2)
            if i + 1 < convWeights.count { h = h.relu() }
        }
        let n = pixels.shape[0], g = config.gridSide, d = config.tokenDim
        // [N, D, G, G] → [N, G·G, D]: one token per grid cell, row-major over the grid.
        let tokens = h.reshaped([n, d, g * g]).permuted([0, 2, 1]) + positionEmbedding
        return ImageTokens(tokens: tokens, gridHeight: g, gridWidth: g)
    }

    /// Encodes decoded images: each is resized to the encoder's input size if needed, then normalised.
    public func encode(_ images: [Image]) -> ImageTokens {
        callAsFunction(pixelTensor(images))
    }

    /// The normalised input tensor [N, 3, side, side] for `images` (resized as needed).
    public func pixelTensor(_ images: [Image]) -> Tensor {
        let side = config.imageSide, plane = 3 * side * side
        let t = Tensor(uninitializedShape: [images.count, 3, side, side])
        for (i, image) in images.enumerated() {
            let rgb = image.channels == 3 ? image : Image(width: image.width, height: image.height, channels: 3,
                                                          pixels: image.pixels.flatMap { [$0, $0, $0] })
            rgb.resized(width: side, height: side).writeCHW(into: t.data + i * plane, normalization: config.normalization)
        }
        return t
    }

    // MARK: Checkpoints

    /// Saves weights and config (metadata `kind`, `config`) as safetensors, atomically.
    public func save(to path: String, metadata extra: [String: String] = [:]) throws {
        try save(to: path, dtype: .f32, metadata: extra.merging(["kind": Self.checkpointKind, "config": try config.json()]) { $1 })
    }

    /// Rebuilds an encoder from a checkpoint written by `save`, refusing files of another kind or with
    /// inconsistent shapes. `expecting`, when given, must match the stored config (for example the grid a consumer
    /// was trained with).
    public static func load(from path: String, expecting: VisionEncoderConfig? = nil) throws -> VisionEncoder {
        let file = try SafetensorsFile(path: path)
        guard file.metadata["kind"] == checkpointKind else {
            throw KVCError.file(path, "metadata kind is \(file.metadata["kind"].map { "'\($0)'" } ?? "missing"); "
                                + "expected '\(checkpointKind)'")
        }
        guard let json = file.metadata["config"] else { throw KVCError.file(path, "metadata has no 'config'") }
        let config: VisionEncoderConfig
        do { config = try JSONDecoder().decode(VisionEncoderConfig.self, from: Data(json.utf8)) } catch {
            throw KVCError.file(path, "metadata 'config' is not a vision encoder config: \(error)")
        }
        try config.validate(source: path)
        if let expecting, expecting != config {
            throw KVCError.file(path, "encoder config \(json) does not match the expected \(try expecting.json())")
        }
        var rng = SeededRandom(seed: 0)
        let encoder = try VisionEncoder(config: config, rng: &rng)
        try encoder.load(from: path)
        return encoder
    }
}
