import Foundation
import KVCBackbone
import KVCCore
import KVCTensor

/// Learned soft tokens placed after the question, before the end of the user turn (prompt tuning, Lester et al. 2021):
///
///     ... </image>\n QUESTION [question prompt tokens]<|im_end|>\n<|im_start|>assistant\n
///
/// Why it exists: the image tokens come before the question, so their keys and values cannot depend on it, and the
/// frozen SmolLM2-135M does not compare a question with what it has read ("is there a red shape?" is answered "no"
/// whatever the image shows). Tokens after the question attend to both the image and the question at every layer,
/// so training them (and nothing else) can make the frozen layers carry out the comparison.
///
/// A *deep* question prompt also learns, per later layer, a vector added to the residual stream of each of its
/// positions (P-Tuning v2, Liu et al. 2022): shallow prompts are known to be weak on small models, and the frozen
/// layers then read a learned query at every depth. The layers' code is unchanged (`PromptPiece.layered`).
///
/// They are stored in their own file, next to the front end (`companionPath(of:)`), because they do not change a
/// single image token: caches collected and adapters fitted with the front end stay valid. The file records the
/// digest of the front end it was trained with and refuses any other.
public final class QuestionPrompt: Module {
    /// `[count, hidden]`.
    public let tokens: Tensor
    /// `[layers - 1, count, hidden]`, in units of `layerResidualScale`: what is added to the residual stream of the
    /// prompt's positions before layers 1... (nil: a shallow prompt, input embeddings only).
    public let layerResidual: Tensor?
    /// `[layers - 1]`: the residual stream's typical RMS at each of those layers, so that one optimizer step moves
    /// every layer's vector by the same fraction of what it steers (the stream grows ~15-fold with depth).
    public let layerResidualScale: [Float]
    /// XXH3-128 of the front-end file these tokens were trained with.
    public var frontEndDigest: String
    /// The text whose token embeddings initialised the tokens (provenance only).
    public var initText: String
    /// Where the tokens go in the prompt.
    public let placement: Placement

    public enum Placement: String, Sendable, CaseIterable {
        /// After the question, before `<|im_end|>`.
        case userTurn = "user-turn"
        /// After the assistant prompt: the last learned position predicts the answer, so a deep prompt steers the
        /// very position that answers.
        case assistantTurn = "assistant-turn"
    }

    public static let checkpointKind = "kvc-question-prompt"

    public init(tokens: Tensor, layerResidual: Tensor? = nil, layerResidualScale: [Float]? = nil,
                placement: Placement = .userTurn, frontEndDigest: String, initText: String = "") {
        self.placement = placement
        precondition(tokens.rank == 2, "QuestionPrompt: tokens must be [count, hidden], got \(tokens.shape)")
        precondition(layerResidual.map { $0.rank == 3 && Array($0.shape.dropFirst()) == tokens.shape } ?? true,
                     "QuestionPrompt: layer residual \(layerResidual?.shape ?? []) does not match tokens \(tokens.shape)")
        self.tokens = tokens
        self.layerResidual = layerResidual
        self.layerResidualScale = layerResidualScale ?? [Float](repeating: 1, count: layerResidual?.shape[0] ?? 0)
        precondition(self.layerResidualScale.count == (layerResidual?.shape[0] ?? 0),
                     "QuestionPrompt: \(self.layerResidualScale.count) layer scales for \(layerResidual?.shape[0] ?? 0) layers")
        self.frontEndDigest = frontEndDigest
        self.initText = initText
    }

    public var count: Int { tokens.shape[0] }
    public var namedParameters: [(name: String, tensor: Tensor)] {
        [("tokens", tokens)] + (layerResidual.map { [("layer_residual", $0)] } ?? [])
    }

    /// The vectors added to the residual stream, `[layers - 1, count, hidden]` (differentiable in `layerResidual`).
    public var scaledLayerResidual: Tensor? {
        layerResidual.map { $0 * Tensor(shape: [layerResidualScale.count, 1, 1], values: layerResidualScale) }
    }

    /// The prompt piece the decoder reads (a copy of the current values).
    public var piece: PromptPiece {
        guard let residual = Tensor.withNoGrad({ scaledLayerResidual }) else { return .embeddings(tokens.scalars, count: count) }
        return .layered(tokens.scalars, count: count, residual: residual.scalars)
    }

    /// `X.safetensors` → `X.question-prompt.safetensors`: where a front end's question prompt lives.
    public static func companionPath(of frontEndPath: String) -> String {
        let stem = frontEndPath.hasSuffix(".safetensors") ? String(frontEndPath.dropLast(".safetensors".count)) : frontEndPath
        return stem + ".question-prompt.safetensors"
    }

    public func save(to path: String) throws {
        var metadata = ["kind": Self.checkpointKind, "front_end_digest": frontEndDigest, "init_text": initText,
                        "placement": placement.rawValue]
        if layerResidual != nil { metadata["layer_residual_scale"] = layerResidualScale.map { "\($0)" }.joined(separator: ",") }
        try save(to: path, dtype: .f32, metadata: metadata)
    }

    /// Loads a question prompt, refusing another kind of file, a width other than `hidden`, more than 256 tokens, a
    /// layer residual for another layer count, or tokens trained with another front end (`frontEndDigest`, if given).
    public static func load(from path: String, hidden: Int, layers: Int,
                            expectingFrontEnd frontEndDigest: String?) throws -> QuestionPrompt {
        let file = try SafetensorsFile(path: path)
        guard file.metadata["kind"] == checkpointKind else {
            throw KVCError.file(path, "metadata kind is \(file.metadata["kind"].map { "'\($0)'" } ?? "missing"), "
                                + "expected '\(checkpointKind)'")
        }
        guard file.contains("tokens") else { throw KVCError.file(path, "missing tensor 'tokens'") }
        let shape = try file.info("tokens").shape
        guard shape.count == 2, (1...256).contains(shape[0]), shape[1] == hidden else {
            throw KVCError.file(path, "tensor 'tokens' has shape \(shape), expected [1...256, \(hidden)]")
        }
        let trainedWith = file.metadata["front_end_digest"] ?? ""
        if let frontEndDigest, trainedWith != frontEndDigest {
            throw KVCError.file(path, "question prompt was trained with front end \(trainedWith.isEmpty ? "(unknown)" : trainedWith), "
                                + "this front end is \(frontEndDigest)")
        }
        var layerResidual: Tensor?, scale: [Float]?
        if file.contains("layer_residual") {
            let deep = try file.info("layer_residual").shape
            guard deep == [layers - 1] + shape else {
                throw KVCError.file(path, "tensor 'layer_residual' has shape \(deep), expected \([layers - 1] + shape) "
                                    + "(\(layers) layers)")
            }
            layerResidual = .zeros(deep, requiresGrad: true)
            let values = (file.metadata["layer_residual_scale"] ?? "").split(separator: ",").compactMap { Float(String($0)) }
            guard values.count == layers - 1, values.allSatisfy({ $0.isFinite && $0 > 0 }) else {
                throw KVCError.file(path, "metadata 'layer_residual_scale' must hold \(layers - 1) positive numbers")
            }
            scale = values
        }
        guard let placement = Placement(rawValue: file.metadata["placement"] ?? Placement.userTurn.rawValue) else {
            throw KVCError.file(path, "metadata 'placement' is '\(file.metadata["placement"] ?? "")', expected one of "
                                + Placement.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let prompt = QuestionPrompt(tokens: .zeros(shape, requiresGrad: true), layerResidual: layerResidual,
                                    layerResidualScale: scale, placement: placement, frontEndDigest: trainedWith,
                                    initText: file.metadata["init_text"] ?? "")
        try prompt.load(from: path)
        return prompt
    }
}

/// Which question prompt a loaded VLM uses.
public enum QuestionPromptSource: Sendable, Equatable {
    /// The front end's companion file (`QuestionPrompt.companionPath`) if it exists, else none.
    case companion
    /// The plain prompt, without learned tokens (to measure what they add).
    case none
    /// This file (an error if it is missing or was trained with another front end).
    case file(String)

    /// Parses a command-line value: `auto` (the companion), `none`, or a path.
    public init(argument: String) {
        switch argument {
        case "auto": self = .companion
        case "none": self = .none
        default: self = .file(argument)
        }
    }
}
