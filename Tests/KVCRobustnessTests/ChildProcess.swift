import Foundation
import XCTest

/// Runs the package's real executables (kvc-train, kvc-collect) as child processes, as a user would, and kills them.
enum ChildProcess {
    /// The package root (for assets and committed checkpoints).
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// `$KVC_ASSETS`, else `assets/` at the package root.
    static var assets: String {
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty { return env }
        return packageRoot + "/assets"
    }

    static var model: String { assets + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
    static var easyVQA: String { assets + "/easy-vqa" }

    /// Fails the test (not a silent skip) when the model or data set is missing.
    static func requireAssets(file: StaticString = #filePath, line: UInt = #line) throws {
        for path in [model, easyVQA + "/answers.txt"] where !FileManager.default.fileExists(atPath: path) {
            XCTFail("\(path) missing: run scripts/setup.sh or set KVC_ASSETS", file: file, line: line)
            throw XCTSkip("assets missing")
        }
    }

    /// The products directory of this build: `swift test` builds the executables next to the test bundle.
    /// `KVC_BIN_DIR` overrides it.
    static func executable(_ name: String) throws -> String {
        var dirs: [String] = []
        if let env = ProcessInfo.processInfo.environment["KVC_BIN_DIR"] { dirs.append(env) }
        var bundle = Bundle(for: Marker.self).bundleURL
        while bundle.pathExtension == "xctest" || bundle.lastPathComponent == "Contents" || bundle.lastPathComponent == "MacOS" {
            bundle.deleteLastPathComponent()
        }
        dirs.append(bundle.path)
        dirs.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path)
        for dir in dirs where FileManager.default.isExecutableFile(atPath: dir + "/" + name) { return dir + "/" + name }
        throw KVCTestError("executable \(name) not found in \(dirs); build it (swift build --product \(name)) or set KVC_BIN_DIR")
    }

    struct Outcome {
        var status: Int32
        var killed: Bool
        var stderr: String
        var seconds: Double
    }

    /// Runs `executable` with `arguments` in the package root; with `killAfter`, sends SIGKILL after that many seconds
    /// unless it has exited before. With `fileSizeLimit` (bytes, a multiple of 1024) the child runs under that
    /// RLIMIT_FSIZE with SIGXFSZ ignored, so a write past it fails with EFBIG as on a full disk (no root needed).
    /// With `killWhen`, the clock of `killAfter` starts once it returns true (polled every 5 ms).
    static func run(_ executable: String, _ arguments: [String], killWhen: (() -> Bool)? = nil, killAfter: Double? = nil,
                    fileSizeLimit: Int? = nil) throws -> Outcome {
        let p = Process()
        if let fileSizeLimit {
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = ["-c", "ulimit -f \(fileSizeLimit / 1024) && trap '' XFSZ && exec \"$0\" \"$@\"", executable] + arguments
        } else {
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments = arguments
        }
        p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        let errURL = URL(fileURLWithPath: NSTemporaryDirectory() + "kvc-child-\(getpid())-\(UUID().uuidString.prefix(8)).err")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let errHandle = try FileHandle(forWritingTo: errURL)
        defer { try? FileManager.default.removeItem(at: errURL) }
        p.standardError = errHandle
        p.standardOutput = FileHandle.nullDevice
        let start = Date()
        try p.run()
        var killed = false
        if let killAfter {
            var armed = start
            if let killWhen {
                while p.isRunning && !killWhen() { usleep(5_000) }
                armed = Date()
            }
            while p.isRunning && Date().timeIntervalSince(armed) < killAfter { usleep(5_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL); killed = true }
        }
        p.waitUntilExit()
        try errHandle.close()
        let err = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        return Outcome(status: p.terminationStatus, killed: killed && p.terminationReason == .uncaughtSignal, stderr: err,
                       seconds: Date().timeIntervalSince(start))
    }

    /// A fresh temporary directory.
    static func temporaryDirectory(_ tag: String) throws -> String {
        let dir = NSTemporaryDirectory() + "kvc-robust-\(tag)-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Regular files under `dir` (relative paths), with their bytes.
    static func contents(of dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.subpathsOfDirectory(atPath: dir) {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir + "/" + name, isDirectory: &isDir), !isDir.boolValue {
                out[name] = FileManager.default.contents(atPath: dir + "/" + name)
            }
        }
        return out
    }

    private final class Marker {}
}

struct KVCTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
