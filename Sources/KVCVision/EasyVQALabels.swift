import Foundation

/// Shape and colour labels of easy-VQA images, derived from the questions and answers about each image, for
/// pretraining the vision encoder as a classifier (stage 1 of DESIGN §3).
///
/// Every easy-VQA image shows one shape in one colour. Each question contributes facts: an answer that names a
/// shape or colour fixes that attribute ("what color is the triangle?" → blue fixes colour = blue and, through the
/// question, shape = triangle); a yes/no question about one shape or colour ("is there not a red shape?" → no)
/// says the attribute is or is not that value. Facts narrow a set of candidates per attribute; a label is
/// determined when one candidate is left, and conflicting facts (no candidate left) are reported.
public enum EasyVQAShape: String, CaseIterable, Sendable, Codable {
    case circle, rectangle, triangle
}

public enum EasyVQAColour: String, CaseIterable, Sendable, Codable {
    case red, green, blue, yellow, teal, brown, black, gray
}

/// What the questions say about one image: the remaining candidates for each attribute, as bit sets over
/// `EasyVQAShape.allCases` / `EasyVQAColour.allCases` indices.
public struct EasyVQAImageFacts: Equatable, Sendable {
    public private(set) var shapeCandidates: UInt16 = (1 << EasyVQAShape.allCases.count) - 1
    public private(set) var colourCandidates: UInt16 = (1 << EasyVQAColour.allCases.count) - 1

    public init() {}

    /// The class index when exactly one candidate is left.
    public var shape: Int? { shapeCandidates.nonzeroBitCount == 1 ? shapeCandidates.trailingZeroBitCount : nil }
    public var colour: Int? { colourCandidates.nonzeroBitCount == 1 ? colourCandidates.trailingZeroBitCount : nil }
    public var isConflicting: Bool { shapeCandidates == 0 || colourCandidates == 0 }

    mutating func shape(_ s: EasyVQAShape, present: Bool) {
        let bit = UInt16(1) << EasyVQAShape.allCases.firstIndex(of: s)!
        shapeCandidates &= present ? bit : ~bit
    }

    mutating func colour(_ c: EasyVQAColour, present: Bool) {
        let bit = UInt16(1) << EasyVQAColour.allCases.firstIndex(of: c)!
        colourCandidates &= present ? bit : ~bit
    }

    /// Applies one question/answer pair; returns false (and changes nothing) when the pair is not understood.
    public mutating func apply(question: String, answer: String) -> Bool {
        let words = question.lowercased().split { !$0.isLetter }.map(String.init)
        let shapes = words.compactMap(EasyVQAShape.init(rawValue:))
        let colours = words.compactMap(EasyVQAColour.init(rawValue:))
        let negated = words.contains("not") || words.contains("no")
        let answer = answer.lowercased()
        if let s = EasyVQAShape(rawValue: answer) {
            // "what is the blue shape?" → rectangle: the shape, and any colour the question names.
            guard !negated, shapes.isEmpty, colours.count <= 1 else { return false }
            shape(s, present: true)
            if let c = colours.first { colour(c, present: true) }
            return true
        }
        if let c = EasyVQAColour(rawValue: answer) {
            guard !negated, colours.isEmpty, shapes.count <= 1 else { return false }
            colour(c, present: true)
            if let s = shapes.first { shape(s, present: true) }
            return true
        }
        guard answer == "yes" || answer == "no", shapes.count + colours.count == 1 else { return false }
        let present = (answer == "yes") != negated
        if let s = shapes.first { shape(s, present: present) } else { colour(colours[0], present: present) }
        return true
    }
}

/// Labels for every image of a split, and how many are determined.
public struct EasyVQALabels: Sendable {
    public let facts: [Int: EasyVQAImageFacts]
    /// Question rows that did not fit any pattern, with the reason.
    public let unparsed: [SkippedEntry]

    public init(questions: [EasyVQA.Question], source: String = "questions") {
        var facts: [Int: EasyVQAImageFacts] = [:]
        var unparsed: [SkippedEntry] = []
        for (i, q) in questions.enumerated() {
            if !facts[q.imageID, default: EasyVQAImageFacts()].apply(question: q.text, answer: q.answer) {
                unparsed.append(SkippedEntry("\(source): question \(i) (image \(q.imageID))",
                                             "no shape/colour fact in '\(q.text)' → '\(q.answer)'"))
            }
        }
        self.facts = facts
        self.unparsed = unparsed
    }

    public var images: Int { facts.count }
    public var shapeDetermined: Int { facts.values.filter { $0.shape != nil }.count }
    public var colourDetermined: Int { facts.values.filter { $0.colour != nil }.count }
    public var bothDetermined: Int { facts.values.filter { $0.shape != nil && $0.colour != nil }.count }
    public var conflicting: [Int] { facts.filter { $0.value.isConflicting }.keys.sorted() }

    public var summary: String {
        let n = max(images, 1)
        func pct(_ k: Int) -> String { String(format: "%.1f%%", 100 * Double(k) / Double(n)) }
        return "\(images) images: shape determined \(shapeDetermined) (\(pct(shapeDetermined))), colour "
            + "\(colourDetermined) (\(pct(colourDetermined))), both \(bothDetermined) (\(pct(bothDetermined))), "
            + "conflicting \(conflicting.count), unparsed questions \(unparsed.count)"
    }
}
