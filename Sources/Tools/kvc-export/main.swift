import ArgumentParser
import Foundation
import KVCCapsule
import KVCCore

/// Packs a trained capsule run into a zstd-compressed, checksummed `.kvcap` adapter.
struct KVCExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-export",
        abstract: "Export a capsule training run (RUN_DIR/adapter.safetensors) as a .kvcap adapter.",
        discussion: """
        The .kvcap file holds the recipe, the ratio and its key/value split, the retention policy (and, when the \
        recipe chose them, the per-layer settings), the backbone fingerprint and shapes, and the reconstructor tensors in float16, byte-shuffled and zstd-compressed, with a \
        checksum. The written file is read back and verified before the command succeeds.
        """)

    @Argument(help: "The run directory written by kvc-train.") var runDir: String
    @Option(name: .shortAndLong, help: "Output .kvcap file.") var output: String

    func run() throws {
        let checkpoint = runDir + "/adapter.safetensors"
        let adapter = try CapsuleAdapter.loadCheckpoint(path: checkpoint)
        try adapter.export(to: output)
        _ = try CapsuleAdapter.load(path: output)
        let raw = (try FileManager.default.attributesOfItem(atPath: checkpoint)[.size] as? NSNumber)?.intValue ?? 0
        let packed = (try FileManager.default.attributesOfItem(atPath: output)[.size] as? NSNumber)?.intValue ?? 0
        let s = adapter.settings
        let perLayer = s.layers.map { l in
            let ratios = l.map { String(format: "%.2f", $0.budget.ratio) }
            return ", per layer: ratios " + ratios.joined(separator: " ") + "; policies "
                + l.map { String($0.policy.rawValue.prefix(1)) }.joined() + "; keys " + l.map { String($0.reconstructor.rawValue.prefix(1)) }.joined()
        } ?? ""
        print("\(output): ratio \(s.budget.ratio) (keys \(s.budget.keyRatio)), retention \(s.policy.rawValue)\(perLayer), "
              + "\(packed) bytes (\(raw) uncompressed), verified")
    }
}

do {
    var command = try KVCExport.parseAsRoot()
    try command.run()
} catch let error as KVCError {
    FileHandle.standardError.write(Data("kvc-export: error: \(error)\n".utf8))
    exit(1)
} catch {
    KVCExport.exit(withError: error)
}
