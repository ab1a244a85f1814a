import KVCCore
import KVCTensor

/// The question's words as the front end reads them: the frozen decoder's token embeddings of the question text,
/// row-major `[count][hidden]` (what `LlamaModel.embed(tokens:)` returns).
public struct QuestionWords: Sendable, Equatable {
    public var embeddings: [Float]
    public var count: Int
    public init(embeddings: [Float], count: Int) {
        self.embeddings = embeddings
        self.count = count
    }
}

/// Instruction-aware image tokens (the idea of InstructBLIP's instruction-aware Q-Former): one vector per image and
/// question, added to every token of the image, computed from the image's pooled encoder features and the words of
/// the question.
///
/// Why the front end reads the question: the frozen SmolLM2-135M cannot compare a question with what an image shows
/// (given "The image shows a red triangle. Is there a blue shape?" it answers from the words alone), and image tokens
/// written without the question leave the comparison to it. Here the comparison happens before the decoder, and the
/// decoder only has to read the answer out of the image tokens, as it reads a colour for "what color is the shape?".
/// The image tokens still carry the answer for every question, so a compressed cache that loses them loses answers.
///
///     words   = mean over question tokens of GELU(wordIn(rmsnorm(e_t)))              [hidden]
///     mixed   = GELU(questionIn(words) + imageIn([mean h_i, max h_i over tokens]))    [hidden]
///     offset  = output(mixed)                                                         [decoder width]
///
/// The word embeddings are RMS-normalised as the decoder's first layer does (their raw scale, RMS 0.13 on SmolLM2,
/// would leave the question's signal far below the image's at initialisation); the image is pooled as the stage-1
/// shape/colour head pools it, where both are linearly readable. `output` starts at zero, so a front end given fresh
/// conditioning produces exactly the tokens it produced before.
public final class QuestionConditioning: Module {
    public let wordIn: Linear
    public let questionIn: Linear
    public let imageIn: Linear
    public let output: Linear

    public init(wordDim: Int, imageDim: Int, hidden: Int, outputDim: Int, rng: inout SeededRandom) {
        wordIn = Linear(wordDim, hidden, rng: &rng)
        questionIn = Linear(hidden, hidden, rng: &rng)
        imageIn = Linear(2 * imageDim, hidden, rng: &rng)
        output = Linear(hidden, outputDim, rng: &rng)
        output.weight.data.update(repeating: 0, count: output.weight.count)
        if let bias = output.bias { bias.data.update(repeating: 0, count: bias.count) }
    }

    public var hidden: Int { wordIn.outFeatures }
    public var wordDim: Int { wordIn.inFeatures }

    public var namedParameters: [(name: String, tensor: Tensor)] {
        [("word_in", wordIn), ("question_in", questionIn), ("image_in", imageIn), ("output", output)].flatMap { name, layer in
            layer.namedParameters.map { ("\(name).\($0.name)", $0.tensor) }
        }
    }

    /// One offset per (image, question) pair `[pairs, outputDim]`.
    /// - Parameters:
    ///   - imageFeatures: the encoder's tokens, pooled by mean and by max (`ImageTokens.meanAndMax`).
    ///   - words: the questions' word embeddings stacked `[totalWords, wordDim]` (constant).
    ///   - questions: per pair, the range of its question's rows in `words`, and the index of its image.
    public func offsets(imageFeatures: ImageTokens, words: Tensor, pairs: [(words: Range<Int>, image: Int)]) -> Tensor {
        output(mixed(pooledImages: imageFeatures.meanAndMax, words: words, pairs: pairs))
    }

    /// The hidden layer `[pairs, hidden]` (what `output` maps to offsets, and what pretraining reads answers from).
    public func mixed(pooledImages: Tensor, words: Tensor, pairs: [(words: Range<Int>, image: Int)]) -> Tensor {
        precondition(!pairs.isEmpty && pairs.allSatisfy { !$0.words.isEmpty && $0.words.upperBound <= words.shape[0] },
                     "QuestionConditioning: every pair needs one or more question words within the \(words.shape[0]) given")
        // The mean over each question's words as one product with a constant pooling matrix [pairs, totalWords].
        let pooling = Tensor.zeros([pairs.count, words.shape[0]])
        for (p, pair) in pairs.enumerated() {
            let weight = 1 / Float(pair.words.count)
            for w in pair.words { pooling.data[p * words.shape[0] + w] = weight }
        }
        let perWord = wordIn(words.rmsNorm(), activation: .gelu)
        let question = questionIn(matmul(pooling, perWord))
        let image = imageIn(pooledImages).indexSelect(axis: 0, pairs.map(\.image))
        return (question + image).gelu()
    }
}
