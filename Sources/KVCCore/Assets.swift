import Foundation

/// Where the fetched model and data live: `$KVC_ASSETS`, else `assets/` in the working directory
/// (scripts/setup.sh fills it).
public enum Assets {
    public static var root: String {
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty { return env }
        return FileManager.default.currentDirectoryPath + "/assets"
    }
    public static var smolLM2GGUF: String { root + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
    public static var easyVQA: String { root + "/easy-vqa" }

    /// Returns the path if it exists, else an error telling how to get it.
    public static func require(_ path: String) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            throw KVCError.file(path, "not found; run scripts/setup.sh (or set KVC_ASSETS to the assets directory)")
        }
        return path
    }
}
