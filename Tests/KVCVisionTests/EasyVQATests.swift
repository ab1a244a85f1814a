import Foundation
import KVCCore
@testable import KVCVision
import XCTest

final class EasyVQATests: XCTestCase {
    func testCountsMatchTheDatasetDescription() throws {
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let counts = try TestSupport.reference().counts
        XCTAssertEqual(dataset.answers.count, 13)
        XCTAssertEqual(dataset.answers.count, counts.answers)
        XCTAssertEqual(Set(dataset.answers), Set(["yes", "no", "circle", "rectangle", "triangle", "red", "green", "blue",
                                                  "yellow", "teal", "brown", "black", "gray"]))
        for (split, expectedImages, expectedQuestions) in [(EasyVQA.Split.train, 4000, 38_575), (.test, 1000, 9673)] {
            let loaded = try dataset.load(split)
            XCTAssertEqual(loaded.images.count, expectedImages, "\(split)")
            XCTAssertEqual(loaded.questions.count, expectedQuestions, "\(split)")
            XCTAssertEqual(loaded.skipped, [], "\(split)")
            XCTAssertEqual(loaded.images.pixels.count, expectedImages * 64 * 64 * 3)
            // Rows hold the right images.
            let id = split == .train ? 1234 : 567
            let row = try XCTUnwrap(loaded.images.row(of: id))
            XCTAssertEqual(loaded.images.image(row: row), try Image.load(path: dataset.imagePath(split, id: id)))
            XCTAssertEqual(loaded.questions.filter { $0.answer == "yes" || $0.answer == "no" }.count,
                           split == .train ? 28_407 : 7136)
            // The kinds `kvc-eval --answer-kind` asks partition the split, in file order.
            let yesNo = loaded.questions(.yesNo).questions, open = loaded.questions(.open).questions
            XCTAssertEqual(yesNo.count, split == .train ? 28_407 : 7136)
            XCTAssertEqual(yesNo.count + open.count, loaded.questions.count)
            XCTAssertTrue(open.allSatisfy { !$0.isYesNo } && yesNo.allSatisfy(\.isYesNo))
            XCTAssertEqual(open.first, loaded.questions.first { !$0.isYesNo })
        }
        let first = try dataset.questions(.train).questions[0]
        XCTAssertEqual(first, EasyVQA.Question(text: "what is the blue shape?", answer: "rectangle",
                                               answerIndex: dataset.answers.firstIndex(of: "rectangle")!, imageID: 0))
    }

    func testCHWRowMatchesImageTransform() throws {
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        let images = try dataset.load(.test).images
        var buffer = [Float](repeating: .nan, count: 3 * 64 * 64)
        buffer.withUnsafeMutableBufferPointer { images.writeCHW(row: 10, into: $0.baseAddress!) }
        XCTAssertEqual(buffer, images.image(row: 10).floatsCHW())
    }

    /// A damaged copy of the dataset: unreadable entries are reported with reasons and counted, nothing crashes.
    func testDamagedEntriesAreReportedAndCounted() throws {
        let source = try TestSupport.easyVQARoot()
        let root = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/test/images", withIntermediateDirectories: true)
        try fm.copyItem(atPath: source + "/answers.txt", toPath: root + "/answers.txt")
        for id in 0..<6 {
            try fm.copyItem(atPath: "\(source)/test/images/\(id).png", toPath: "\(root)/test/images/\(id).png")
        }
        // 1: truncated, 2: not an image, 3: wrong size, 4: missing but referenced, plus a stray file.
        let one = try Data(contentsOf: URL(fileURLWithPath: root + "/test/images/1.png"))
        try one.prefix(100).write(to: URL(fileURLWithPath: root + "/test/images/1.png"))
        try "text".write(toFile: root + "/test/images/2.png", atomically: true, encoding: .utf8)
        try fm.removeItem(atPath: root + "/test/images/3.png")
        try fm.copyItem(atPath: TestSupport.fixture("rgb.png"), toPath: root + "/test/images/3.png")
        try fm.removeItem(atPath: root + "/test/images/4.png")
        try "x".write(toFile: root + "/test/images/readme.txt", atomically: true, encoding: .utf8)
        let rows = #"""
        [["what color is the shape?", "blue", 0], ["is there a circle?", "no", 1], ["what shape is present?", "circle", 2],
         ["is a red shape present?", "yes", 3], ["is there a triangle?", "yes", 4], ["what is the red shape?", "circle", 5],
         ["bad row", "yes"], ["what color?", "purple", 5], [1, "yes", 5], ["ok?", "yes", -2], ["ok?", "yes", 1.5]]
        """#
        try rows.write(toFile: root + "/test/questions.json", atomically: true, encoding: .utf8)

        let loaded = try EasyVQA(root: root).load(.test)
        XCTAssertEqual(loaded.images.ids, [0, 5])
        XCTAssertEqual(loaded.questions.map(\.imageID), [0, 5])
        let report = loaded.skipped.map(\.description).joined(separator: "\n")
        func expect(_ fragment: String) { XCTAssertTrue(report.contains(fragment), "report lacks '\(fragment)':\n\(report)") }
        expect("row 6: has 2 cells")
        expect("row 7: answer 'purple' is not in answers.txt")
        expect("row 8: expected [question: string")
        expect("row 9: image_id -2 is negative")
        expect("row 10: expected [question: string")
        expect("images/1.png: invalid or damaged PNG")
        expect("images/2.png: not a PNG or JPEG")
        expect("images/3.png: image is 7x5; expected 64x64")
        expect("images/4.png: image file not found")
        expect("images/readme.txt: not an easy-VQA image name")
        expect("image 4: 1 question(s) skipped")
        // 5 bad rows, 4 bad images, 1 stray file, 4 images whose questions went with them.
        XCTAssertEqual(loaded.skipped.count, 14, report)

        // A questions file that is not a JSON array is a whole-file error naming it.
        try "{}".write(toFile: root + "/test/questions.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try EasyVQA(root: root).load(.test)) {
            XCTAssertTrue("\($0)".contains(root + "/test/questions.json"), "\($0)")
        }
        XCTAssertThrowsError(try EasyVQA(root: root + "/nowhere")) {
            XCTAssertTrue("\($0)".contains("nowhere/answers.txt"), "\($0)")
        }
    }

    // MARK: Labels

    func testQuestionFactsDetermineLabels() {
        var facts = EasyVQAImageFacts()
        XCTAssertTrue(facts.apply(question: "what is the blue shape?", answer: "rectangle"))
        XCTAssertEqual(facts.shape, EasyVQAShape.allCases.firstIndex(of: .rectangle))
        XCTAssertEqual(facts.colour, EasyVQAColour.allCases.firstIndex(of: .blue))

        var colourOnly = EasyVQAImageFacts()
        XCTAssertTrue(colourOnly.apply(question: "what color is the shape?", answer: "teal"))
        XCTAssertEqual(colourOnly.colour, EasyVQAColour.allCases.firstIndex(of: .teal))
        XCTAssertNil(colourOnly.shape)
        // Two negative shape facts leave one candidate; double negation reads as presence.
        XCTAssertTrue(colourOnly.apply(question: "is there a circle in the image?", answer: "no"))
        XCTAssertNil(colourOnly.shape)
        XCTAssertTrue(colourOnly.apply(question: "does the image not contain a triangle?", answer: "yes"))
        XCTAssertEqual(colourOnly.shape, EasyVQAShape.allCases.firstIndex(of: .rectangle))

        var negated = EasyVQAImageFacts()
        XCTAssertTrue(negated.apply(question: "is no red shape present?", answer: "no"))
        XCTAssertEqual(negated.colour, EasyVQAColour.allCases.firstIndex(of: .red))
        XCTAssertTrue(negated.apply(question: "what color is the triangle?", answer: "red"))
        XCTAssertEqual(negated.shape, EasyVQAShape.allCases.firstIndex(of: .triangle))
        XCTAssertFalse(negated.isConflicting)
        XCTAssertTrue(negated.apply(question: "is there a gray shape?", answer: "yes"))
        XCTAssertTrue(negated.isConflicting)
        XCTAssertNil(negated.colour)

        var unknown = EasyVQAImageFacts()
        XCTAssertFalse(unknown.apply(question: "how many shapes?", answer: "yes"))
        XCTAssertFalse(unknown.apply(question: "is there a red circle?", answer: "yes"))  // two facts joined by "and"?
        XCTAssertEqual(unknown, EasyVQAImageFacts())
    }

    /// On the real data: no conflicts, every question understood, and most images fully labelled.
    func testLabelCoverageOnTheRealQuestions() throws {
        let dataset = try EasyVQA(root: TestSupport.easyVQARoot())
        for split in EasyVQA.Split.allCases {
            let labels = EasyVQALabels(questions: try dataset.questions(split).questions, source: split.rawValue)
            print("easy-VQA \(split.rawValue) labels: \(labels.summary)")
            XCTAssertEqual(labels.unparsed, [])
            XCTAssertEqual(labels.conflicting, [])
            XCTAssertEqual(labels.images, split == .train ? 4000 : 1000)
            XCTAssertGreaterThan(Double(labels.bothDetermined) / Double(labels.images), 0.5)
        }
    }
}
