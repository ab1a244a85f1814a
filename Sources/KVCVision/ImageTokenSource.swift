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
    func embed(_ images: [Image]) -> [[Float]]
}

extension FrontEnd: ImageTokenSource {
    public var tokenWidth: Int { projector.second.outFeatures }
}
