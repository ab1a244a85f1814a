/// What a vision-language model needs from its vision side: images in, one row-major `[tokensPerImage * tokenWidth]`
/// array of soft tokens per image out, laid out as a `gridSide x gridSide` raster (the grid the capsules use).
///
/// The project's trained `FrontEnd` is one; a Hugging Face SmolVLM's SigLIP tower + pixel-shuffle connector
/// (`KVCSmolVLM`) is another, so `VisionLanguageModel`, collection and evaluation run on either.
public protocol ImageTokenSource: AnyObject {
    var tokensPerImage: Int { get }
    var gridSide: Int { get }
    /// Width of each token: must equal the decoder's hidden size.
    var tokenWidth: Int { get }
    /// Whether the tokens depend on the question (an instruction-aware front end): a prefix then serves one question.
    var readsQuestion: Bool { get }
    /// The image tokens of `images` for a prompt asking `question` (ignored unless `readsQuestion`).
    func embed(_ images: [Image], question: QuestionWords?) -> [[Float]]
}

extension ImageTokenSource {
    /// The tokens without a question (for a front end that reads one: before the question's offset).
    public func embed(_ images: [Image]) -> [[Float]] { embed(images, question: nil) }
}

extension FrontEnd: ImageTokenSource {
    public var tokenWidth: Int { projector.second.outFeatures }
}
