import Foundation
import KVCBackbone
import KVCCollect
import KVCCore
import KVCVision

/// A Hugging Face model directory loaded for inference: an Idefics3 / SmolVLM vision-language model (SigLIP tower,
/// pixel-shuffle connector, Llama decoder) or a plain Llama decoder (`LlamaForCausalLM`, `vision` is nil).
///
/// The decoder is the backbone's `LlamaModel` (weights converted by `HFLlamaConversion`), so caches, capsules and
/// generation work on it unchanged. Image tokens enter the prompt as soft embeddings at the positions that hold
/// `config.image_token_id`, in order, as transformers' `inputs_merger` places them.
public final class SmolVLM {
    public let directory: String
    public let config: HFModelConfig
    public let decoder: LlamaModel
    /// The decoder with the directory's tokenizer, when `tokenizer.json` is present and of a supported kind
    /// (`HFTokenizerJSON`); nil otherwise — token ids still work, text prompts do not.
    public let backbone: Backbone?
    public let vision: ImageEncoder?

    /// The vision side of an Idefics3 model: preprocessing, SigLIP tower and connector.
    public final class ImageEncoder {
        public let config: Idefics3Config
        public let processor: Idefics3ImageProcessor
        public let tower: SigLIPVisionTransformer
        public let connector: PixelShuffleConnector

        init(checkpoint: HFCheckpoint, config: Idefics3Config, processor: Idefics3ImageProcessor) throws {
            self.config = config
            self.processor = processor
            tower = try SigLIPVisionTransformer(checkpoint: checkpoint, config: config.vision)
            connector = try PixelShuffleConnector(checkpoint: checkpoint, scaleFactor: config.scaleFactor,
                                                  visionWidth: config.vision.hiddenSize,
                                                  textWidth: config.text.llama.hiddenSize)
        }

        /// The tokens of the image's square global image alone, `[tokensPerImage, textHidden]` row-major, raster order
        /// over a `gridSide` square (what `VisionLanguageModel` uses: a fixed number of tokens per image).
        public func tokens(for image: Image) -> [Float] {
            tokens(pixels: processor.pixels(image))
        }

        /// The image as the processor config says: with splitting, one token array per tile (row-major) then the
        /// global image's; without, the global image's alone.
        public func input(for image: Image) -> ImageInput {
            let processed = processor.process(image)
            return ImageInput(tokens: processed.images.map(tokens(pixels:)), rows: processed.rows, cols: processed.cols)
        }

        /// The same from already-preprocessed planar pixels `[3, imageSize, imageSize]`.
        public func tokens(pixels: [Float]) -> [Float] {
            connector.project(tower.encode(pixels: pixels), patchesPerSide: config.vision.patchesPerSide)
        }
    }

    /// Loads `config.json`, the safetensors weights (single file or shards), `tokenizer.json` when present (an
    /// unsupported one is skipped with a warning) and, for Idefics3, `preprocessor_config.json` (defaults with a
    /// warning when absent).
    /// - Throws: `KVCError` naming the file and field or tensor at fault.
    public init(directory: String, warn: (String) -> Void = standardErrorWarning) throws {
        self.directory = directory
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw KVCError.file(configPath, "not found; a Hugging Face model directory needs config.json")
        }
        config = try HFModelConfig.read(path: configPath)
        let checkpoint = try HFCheckpoint(directory: directory)
        var tokenizer: HFTokenizerJSON?
        if FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent("tokenizer.json")) {
            do {
                tokenizer = try HFTokenizerJSON.read(directory: directory)
            } catch let error as KVCError {
                warn("\(error.message); text prompts are unavailable, token ids still work")
            }
        }
        let text: HFLlamaConfig, prefix: String
        switch config {
        case .llama(let c): (text, prefix) = (c, "model.")
        case .idefics3(let c): (text, prefix) = (c.text, "model.text_model.")
        }
        let file = try HFLlamaConversion.convert(checkpoint: checkpoint, config: text, prefix: prefix, tokenizer: tokenizer)
        backbone = tokenizer == nil ? nil : try Backbone(file: file)
        decoder = try backbone?.model ?? LlamaModel(file: file)
        if case .idefics3(let c) = config {
            let processor = try Idefics3ImageProcessor.load(directory: directory, imageSize: c.vision.imageSize, warn: warn)
            vision = try ImageEncoder(checkpoint: checkpoint, config: c, processor: processor)
        } else {
            vision = nil
        }
    }

    /// One image's tokens for the prompt: one `[tokensPerImage * hidden]` array per tile and one for the global image,
    /// with the tile grid (rows = cols = 0: the global image alone), which decides its placeholder text.
    public struct ImageInput: Sendable {
        public var tokens: [[Float]]
        public var rows: Int
        public var cols: Int
    }

    /// Each image's input (see `ImageEncoder.input(for:)`).
    /// - Throws: `KVCError` when images are given to a model without a vision tower.
    public func imageInputs(for images: [Image]) throws -> [ImageInput] {
        guard !images.isEmpty else { return [] }
        guard let vision else { throw KVCError("this model (\(directory)) has no vision tower; it takes no images") }
        return images.map(vision.input(for:))
    }

    /// The image token id (nil for a text-only model).
    public var imageTokenId: Int? { vision?.config.imageTokenId }

    /// A prompt for exactly `tokenIds`, with the positions holding the image token id replaced, in order, by the rows of
    /// `imageTokens` (each image, tile or global image, `[tokensPerImage * hidden]`), and the grid of each one's tokens.
    /// - Throws: `KVCError` when the number of image-token positions does not match the images given, or an image's
    ///   positions are not one contiguous run (no grid then).
    public func prompt(tokenIds: [Int], imageTokens: [[Float]]) throws -> (pieces: [PromptPiece], grids: [ImageGrid]) {
        guard let vision else {
            guard imageTokens.isEmpty else { throw KVCError("this model (\(directory)) has no vision tower") }
            return ([.tokens(tokenIds)], [])
        }
        let perImage = vision.config.tokensPerImage, side = vision.config.gridSide
        let imageToken = vision.config.imageTokenId
        let positions = tokenIds.indices.filter { tokenIds[$0] == imageToken }
        guard positions.count == perImage * imageTokens.count else {
            throw KVCError("the token ids hold \(positions.count) image tokens (id \(imageToken)) but \(imageTokens.count) "
                           + "image(s) give \(perImage * imageTokens.count) (\(perImage) each, a \(side)x\(side) grid)")
        }
        let hidden = decoder.config.hiddenSize
        for (i, tokens) in imageTokens.enumerated() where tokens.count != perImage * hidden {
            throw KVCError("image \(i) has \(tokens.count) token values, expected \(perImage) x \(hidden)")
        }
        var pieces: [PromptPiece] = [], grids: [ImageGrid] = []
        var text: [Int] = []
        var image = 0, row = 0
        var rows: [Float] = []
        for (i, id) in tokenIds.enumerated() {
            if id != imageToken { text.append(id); continue }
            if !text.isEmpty { pieces.append(.tokens(text)); text = [] }
            if row == 0 { grids.append(ImageGrid(start: i, rows: side, cols: side)) }
            rows += imageTokens[image][(row * hidden)..<((row + 1) * hidden)]
            row += 1
            if row == perImage {
                guard grids[image].start + perImage - 1 == i else {
                    throw KVCError("image \(image)'s \(perImage) tokens are not contiguous in the token ids "
                                   + "(first at index \(grids[image].start), last at \(i))")
                }
                pieces.append(.embeddings(rows, count: perImage))
                rows = []
                row = 0
                image += 1
            }
        }
        if !text.isEmpty { pieces.append(.tokens(text)) }
        return (pieces, grids)
    }
}
