import ArgumentParser
import Foundation
import KVCCore
import KVCCapsule
import KVCGGUF
import KVCBackbone
import KVCVision

/// Trains what a recipe describes. Every run is resumable: rerun the same command after an interruption.
struct KVCTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-train",
        abstract: "Train from a YAML recipe (front end or capsule adapters).",
        discussion: """
        The recipe's `kind` selects what is trained:
          front-end  the vision front end: stage 1 (encoder as a shape/colour classifier), stage 2 (projector aligned \
        through the frozen SmolLM2 decoder on easy-VQA). Example: recipes/frontend-easyvqa.yaml. With a \
        `conditioning:` section the image tokens read the question: stage 3a (the conditioning learns yes/no from \
        pooled image features and the question's words, cheaply), stage 3b (its read-out into the tokens, through the \
        decoder). Example: recipes/frontend-easyvqa-instruct.yaml (the shipped front end).
          capsule    a KVCapsule adapter for one compression ratio, on caches from kvc-collect: the linear key map in \
        closed form, and with `reconstructor.kind: mlp` the key MLP trained layer by layer (checkpoint after each \
        layer). Examples: recipes/capsule-r0.4.yaml, capsule-r0.6.yaml, capsule-r0.8.yaml; `retention: scored` \
        (capsule-r0.8-scored.yaml) keeps the keys the question attends to most; a `layers:` section sets the budget, \
        retention and reconstructor per layer range (capsule-r0.8-layers.yaml).
        Unknown keys and out-of-range values are errors naming the key. Progress (steps/s, ETA) goes to stderr, \
        metrics to RUN_DIR/metrics.jsonl, checkpoints to RUN_DIR every `checkpoint_every` steps.
        """)

    @Argument(help: "The recipe (YAML).") var recipe: String
    @Option(help: "BLAS threads (default: all cores).") var threads: Int?
    @Option(help: "The backbone GGUF (capsule recipes read its RoPE base).") var model: String = Assets.smolLM2GGUF

    func run() throws {
        if let threads { BLAS.threads = threads }
        let r = try RecipeSection.load(path: recipe)
        switch try r.string("kind", allowed: ["front-end", "capsule"]) {
        case "capsule":
            let config = try LlamaConfig(gguf: GGUFFile(path: Assets.require(model)))
            try CapsuleRecipe.load(path: recipe).run(ropeBase: config.ropeBase)
        default:
            try FrontEndRecipe(r).run()
        }
    }
}

do {
    var command = try KVCTrain.parseAsRoot()
    try command.run()
} catch let error as KVCError {
    FileHandle.standardError.write(Data("kvc-train: error: \(error)\n".utf8))
    exit(1)
} catch {
    KVCTrain.exit(withError: error)
}
