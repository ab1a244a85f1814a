import Foundation
import XCTest

enum TestSupport {
    /// The fixture directory shipped with this test target.
    static var fixtures: String {
        get throws {
            guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
                throw XCTSkip("KVCVisionTests fixtures missing from the bundle")
            }
            return url.path
        }
    }

    static func fixture(_ name: String) throws -> String { try fixtures + "/" + name }

    /// `$KVC_ASSETS/easy-vqa`, else `assets/easy-vqa` at the package root; fails clearly when it is missing.
    static func easyVQARoot(file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let root: String
        if let env = ProcessInfo.processInfo.environment["KVC_ASSETS"], !env.isEmpty {
            root = env + "/easy-vqa"
        } else {
            let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            root = packageRoot.appendingPathComponent("assets/easy-vqa").path
        }
        guard FileManager.default.fileExists(atPath: root + "/answers.txt") else {
            XCTFail("easy-VQA missing at \(root): run scripts/setup.sh or set KVC_ASSETS", file: file, line: line)
            throw XCTSkip("easy-VQA missing")
        }
        return root
    }

    /// The SmolLM2 GGUF next to easy-VQA in the assets; fails clearly when it is missing.
    static func modelPath(file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let path = URL(fileURLWithPath: try easyVQARoot(file: file, line: line)).deletingLastPathComponent()
            .appendingPathComponent("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").path
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("model missing at \(path): run scripts/setup.sh or set KVC_ASSETS", file: file, line: line)
            throw XCTSkip("model missing")
        }
        return path
    }

    /// Pixel references written by scripts/reference/image_reference.py (Pillow/pypng decodes).
    struct Reference: Decodable {
        struct File: Decodable { let width: Int; let height: Int; let rgb: [Int] }
        struct EasyImage: Decodable {
            let split: String; let id: Int; let width: Int; let height: Int
            let byte_sum: Int; let rgb_hex: String?; let samples: [[Int]]
        }
        struct SplitCounts: Decodable { let images: Int; let questions: Int }
        struct Counts: Decodable { let train: SplitCounts; let test: SplitCounts; let answers: Int }
        let files: [String: File]
        let easy_vqa: [String: EasyImage]
        let counts: Counts
    }

    static func reference() throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: fixture("reference.json"))))
    }

    static func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "kvc-vision-tests-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}

extension Data {
    init(hex: String) {
        var bytes = [UInt8]()
        bytes.reserveCapacity(hex.count / 2)
        var it = hex.utf8.makeIterator()
        func nibble(_ c: UInt8) -> UInt8 { c >= 97 ? c - 87 : c - 48 }
        while let a = it.next(), let b = it.next() { bytes.append(nibble(a) << 4 | nibble(b)) }
        self.init(bytes)
    }
}
