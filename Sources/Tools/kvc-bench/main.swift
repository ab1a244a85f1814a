import ArgumentParser
import KVCBackbone

/// Benchmarks print figures (a table, or JSON with --json), side by side with their reference in one run.
struct KVCBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-bench",
        abstract: "Benchmarks of the toolkit, printed next to their references.",
        subcommands: [FrozenDecoderBench.self, MatmulBench.self, TrainStepBench.self, DecodeBench.self, CollectBench.self,
                      CapsuleBench.self])
}

KVCBench.main()

extension WeightProducts: ExpressibleByArgument {}
