import Foundation
import XCTest
import KVCCore
import KVCVision
@testable import KVCBaselines

/// Every method end to end on a few easy-VQA questions with the real decoder and the shipped front end, and the
/// multi-image task's construction.
final class MethodEvaluationTests: XCTestCase {
    nonisolated(unsafe) private static var shared: (VisionLanguageModel, EasyVQASplit)?
    private static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path
    private static var assets: String {
        ProcessInfo.processInfo.environment["KVC_ASSETS"].flatMap { $0.isEmpty ? nil : $0 } ?? repo + "/assets"
    }
    private static var modelPath: String { assets + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
    private static var frontEndPath: String { repo + "/" + FrontEnd.defaultCheckpoint }

    private func setUp() throws -> (VisionLanguageModel, EasyVQASplit) {
        if let s = Self.shared { return s }
        for path in [Self.modelPath, Self.frontEndPath, Self.assets + "/easy-vqa"] where !FileManager.default.fileExists(atPath: path) {
            XCTFail("missing \(path): run scripts/setup.sh")
            throw KVCError("missing \(path)")
        }
        let vlm = try VisionLanguageModel.load(modelPath: Self.modelPath, frontEndPath: Self.frontEndPath)
        let split = try EasyVQA(root: Self.assets + "/easy-vqa").load(.test)
        Self.shared = (vlm, split)
        return (vlm, split)
    }

    func testEveryMethodAnswersWithinItsBytesAndReportsFidelity() throws {
        let (vlm, split) = try setUp()
        let task = try MultiImageTask(split: split, images: 1, limit: 3)
        let evaluation = CacheFidelityEvaluation(model: vlm, task: task, split: split)
        let full = try evaluation.observe(.full(vlm))
        let identity = try evaluation.compare(full, full: full)
        XCTAssertEqual(identity.agreement, 1)
        XCTAssertEqual(identity.kl, 0, accuracy: 1e-9)
        XCTAssertEqual(identity.attn_rel_error.count, vlm.backbone.model.config.layerCount)
        XCTAssertTrue(identity.attn_rel_error.allSatisfy { $0 == 0 })
        XCTAssertEqual(identity.kv_bytes_vision, identity.kv_bytes_vision_full)

        for name in MethodCatalog.names where name != "full" {
            let adapter = name == "capsule" ? Self.repo + "/checkpoints/capsule-r0.6.kvcap" : nil
            let method = try MethodCatalog.method(named: name, ratio: 0.6, model: vlm, adapter: adapter,
                                                  modelPath: Self.modelPath, frontEndPath: Self.frontEndPath)
            let s = try evaluation.compare(evaluation.observe(method), full: full)
            XCTAssertEqual(s.n, 3)
            XCTAssertEqual(s.method, name)
            XCTAssertEqual(s.accuracy_full, identity.accuracy)
            let budget = (1 - s.ratio) * Double(s.kv_bytes_vision_full)
            XCTAssertEqual(Double(s.kv_bytes_vision) / budget, 1, accuracy: name == "pca" ? 0.03 : 0.02,
                           "\(name): \(s.kv_bytes_vision) vision bytes for a budget of \(budget)")
            XCTAssertLessThan(s.kv_bytes, s.kv_bytes_full)
            XCTAssertTrue(s.attn_rel_error.contains { $0 > 0 } && s.attn_rel_error.allSatisfy { $0.isFinite && $0 < 2 },
                          "\(name): \(s.attn_rel_error)")
            XCTAssertTrue(s.kl >= 0 && s.kl.isFinite)
            XCTAssertTrue((0...1).contains(s.agreement) && (0...1).contains(s.top1_agreement))
        }
    }

    func testMultiImagePromptsNameTheirImageAndFollowTheSeed() throws {
        let (vlm, split) = try setUp()
        let a = try MultiImageTask(split: split, images: 4, limit: 10, seed: 7)
        XCTAssertEqual(a.prompts, try MultiImageTask(split: split, images: 4, limit: 10, seed: 7).prompts)
        XCTAssertNotEqual(a.prompts[0].imageIDs, try MultiImageTask(split: split, images: 4, limit: 10, seed: 8).prompts[0].imageIDs)
        XCTAssertEqual(a.questionCount, 10)
        XCTAssertEqual(a.prompts.count, 3, "one question per image by default: 4 + 4 + 2")
        for p in a.prompts {
            XCTAssertEqual(p.imageIDs.count, 4)
            XCTAssertEqual(Set(p.imageIDs).count, 4)
            for q in p.questions {
                XCTAssertEqual(q.imageID, p.imageIDs[q.slot - 1])
                XCTAssertEqual(q.text, "In image \(q.slot), \(q.original)")
                XCTAssertTrue(split.questions.contains { $0.imageID == q.imageID && $0.text == q.original && $0.answer == q.expected })
            }
        }
        let single = try MultiImageTask(split: split, images: 1, limit: 5)
        XCTAssertEqual(single.prompts.flatMap { $0.questions.map(\.original) }, split.questions.prefix(5).map(\.text),
                       "one image: easy-VQA's questions in file order, unchanged")
        let open = try MultiImageTask(split: split, images: 4, limit: 12, seed: 7, answerKind: .open)
        XCTAssertEqual(open.name, "easy-vqa-multi-open")
        XCTAssertEqual(open.questionCount, 12)
        XCTAssertTrue(open.prompts.allSatisfy { $0.questions.allSatisfy { !EasyVQA.isYesNo($0.expected) } })
        // A 4-image prompt puts four grids in the prefix, and the K=4 evaluation runs (one question, fast).
        let one = try MultiImageTask(split: split, images: 4, limit: 1, seed: 7)
        let evaluation = CacheFidelityEvaluation(model: vlm, task: one, split: split)
        let run = try evaluation.observe(.full(vlm))
        XCTAssertEqual(run.visionBytesFull, 4 * 64 * 30 * 3 * 64 * 2 * 2)
    }
}
