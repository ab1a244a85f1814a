import Foundation
import KVCBackbone
import KVCCore

/// The real SmolLM2 decoder, loaded once for every test class of this target that needs it (loading takes seconds).
enum RealModel {
    nonisolated(unsafe) private static var model: LlamaModel?

    static func shared() throws -> LlamaModel {
        if let m = model { return m }
        let root = ProcessInfo.processInfo.environment["KVC_ASSETS"].flatMap { $0.isEmpty ? nil : $0 }
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../assets").standardized.path
        let path = root + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else {
            throw KVCError("model missing at \(path): run scripts/setup.sh or set KVC_ASSETS")
        }
        let m = try LlamaModel(path: path)
        model = m
        return m
    }
}
