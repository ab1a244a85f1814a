import ArgumentParser
import Foundation
import KVCCore
import KVCVision

/// Trains what a recipe describes. Every run is resumable: rerun the same command after an interruption.
struct KVCTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-train",
        abstract: "Train from a YAML recipe (front end or capsule adapters).",
        discussion: """
        The recipe's `kind` selects what is trained:
          front-end  the vision front end: stage 1 (encoder as a shape/colour classifier), stage 2 (projector aligned \
        through the frozen SmolLM2 decoder on easy-VQA). Example: recipes/frontend-easyvqa.yaml.
        Unknown keys and out-of-range values are errors naming the key. Progress (steps/s, ETA) goes to stderr, \
        metrics to RUN_DIR/metrics.jsonl, checkpoints to RUN_DIR every `checkpoint_every` steps.
        """)

    @Argument(help: "The recipe (YAML).") var recipe: String
    @Option(help: "BLAS threads (default: all cores).") var threads: Int?

    func run() throws {
        if let threads { BLAS.threads = threads }
        let r = try RecipeSection.load(path: recipe)
        switch try r.string("kind", allowed: ["front-end"]) {
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
