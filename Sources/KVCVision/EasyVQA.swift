import Foundation
import KVCCore
import KVCTensor

/// The easy-VQA dataset as fetched into `assets/easy-vqa`: `answers.txt` (13 one-word answers), and per split
/// `questions.json` (rows `[question, answer, image_id]`) and `images/{id}.png` (64x64 RGB).
///
/// Whole-file problems (a missing or unparsable `questions.json` or `answers.txt`) throw. A single entry that cannot
/// be used (a malformed row, an unknown answer, an unreadable or wrongly sized image) is left out and listed in
/// `skipped` with the reason; the questions about a skipped image are skipped with it.
public struct EasyVQA: Sendable {
    public enum Split: String, CaseIterable, Sendable { case train, test }

    public struct Question: Equatable, Sendable {
        public let text: String
        public let answer: String
        /// Index of `answer` in `EasyVQA.answers`.
        public let answerIndex: Int
        public let imageID: Int

        /// A yes/no question: 74% of easy-VQA, and answerable ~88% of the time from the text alone (`AnswerBalance`).
        public var isYesNo: Bool { EasyVQA.isYesNo(answer) }

        public init(text: String, answer: String, answerIndex: Int, imageID: Int) {
            self.text = text
            self.answer = answer
            self.answerIndex = answerIndex
            self.imageID = imageID
        }
    }

    public static let imageSide = 64

    public static func isYesNo(_ answer: String) -> Bool { answer == "yes" || answer == "no" }

    public let root: String
    /// The answer vocabulary in the order of `answers.txt`.
    public let answers: [String]

    public init(root: String = Assets.easyVQA) throws {
        self.root = root
        let path = root + "/answers.txt"
        let text = try readText(path)
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        guard !lines.isEmpty else { throw KVCError.file(path, "no answers; expected one answer per line") }
        var seen = Set<String>()
        for (i, a) in lines.enumerated() where !seen.insert(a).inserted {
            throw KVCError.file(path, "line \(i + 1): duplicate answer '\(a)'")
        }
        answers = lines
    }

    public func questionsPath(_ split: Split) -> String { "\(root)/\(split.rawValue)/questions.json" }
    public func imagePath(_ split: Split, id: Int) -> String { "\(root)/\(split.rawValue)/images/\(id).png" }

    /// Parses `questions.json` of a split. Rows that do not have the shape `[string, known answer, id >= 0]` are
    /// skipped with the row number and what was wrong.
    public func questions(_ split: Split) throws -> (questions: [Question], skipped: [SkippedEntry]) {
        let path = questionsPath(split)
        let rows: [LenientRow]
        do { rows = try JSONDecoder().decode([LenientRow].self, from: try readData(path)) } catch {
            throw KVCError.file(path, "not a JSON array of rows; expected [[question, answer, image_id], ...] "
                                + "(\(error))")
        }
        let answerIndex = Dictionary(uniqueKeysWithValues: answers.enumerated().map { ($1, $0) })
        var questions: [Question] = []
        var skipped: [SkippedEntry] = []
        questions.reserveCapacity(rows.count)
        for (i, row) in rows.enumerated() {
            let location = "\(path): row \(i)"
            switch row {
            case .malformed(let reason):
                skipped.append(SkippedEntry(location, reason))
            case .row(let text, let answer, let id):
                guard id >= 0 else {
                    skipped.append(SkippedEntry(location, "image_id \(id) is negative"))
                    continue
                }
                guard let index = answerIndex[answer] else {
                    skipped.append(SkippedEntry(location, "answer '\(answer)' is not in answers.txt"))
                    continue
                }
                questions.append(Question(text: text, answer: answer, answerIndex: index, imageID: id))
            }
        }
        return (questions, skipped)
    }

    /// Loads a split: questions, and every image that is in `images/` or referenced by a question, decoded to
    /// 8-bit RGB in memory (both cores). Images that fail to decode or are not 64x64 are skipped, and so are the
    /// questions about them.
    public func load(_ split: Split, progress: Bool = false) throws -> EasyVQASplit {
        var (questions, skipped) = try self.questions(split)
        let imageDir = "\(root)/\(split.rawValue)/images"
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: imageDir) } catch {
            throw KVCError.file(imageDir, "cannot list the image directory: \(error.localizedDescription)")
        }
        var ids = Set<Int>()
        for name in names.sorted() {
            if name.hasSuffix(".png"), let id = Int(name.dropLast(4)), id >= 0, "\(id).png" == name {
                ids.insert(id)
            } else if !name.hasPrefix(".") {
                skipped.append(SkippedEntry("\(imageDir)/\(name)", "not an easy-VQA image name; expected {id}.png"))
            }
        }
        for q in questions { ids.insert(q.imageID) }
        let images = EasyVQAImages.load(ids: ids.sorted(), side: Self.imageSide, path: { imagePath(split, id: $0) },
                                        progress: progress ? "easy-VQA \(split.rawValue) images" : nil)
        skipped += images.skipped
        let usable = questions.filter { images.row(of: $0.imageID) != nil }
        if usable.count < questions.count {
            var orphans: [Int: Int] = [:]
            for q in questions where images.row(of: q.imageID) == nil { orphans[q.imageID, default: 0] += 1 }
            for (id, n) in orphans.sorted(by: { $0.key < $1.key }) {
                skipped.append(SkippedEntry("\(questionsPath(split)): image \(id)",
                                            "\(n) question(s) skipped because \(imagePath(split, id: id)) is unusable"))
            }
            questions = usable
        }
        return EasyVQASplit(split: split, questions: questions, images: images, skipped: skipped)
    }
}

/// A dataset entry that was left out, with where it is and why.
public struct SkippedEntry: Equatable, Sendable, CustomStringConvertible {
    public let location: String
    public let reason: String
    public init(_ location: String, _ reason: String) {
        self.location = location
        self.reason = reason
    }
    public var description: String { "\(location): \(reason)" }
}

/// One loaded split: its usable questions, its decoded images, and everything that was skipped.
public struct EasyVQASplit: Sendable {
    public let split: EasyVQA.Split
    public let questions: [EasyVQA.Question]
    public let images: EasyVQAImages
    public let skipped: [SkippedEntry]

    /// Which questions an evaluation asks: all, the yes/no ones, or the open ones (shape and colour names), whose
    /// answers depend on the image tokens the most.
    public enum AnswerKind: String, CaseIterable, Sendable {
        case all, yesNo = "yes-no", open
    }

    /// The same split with only the questions of `kind` (file order kept).
    public func questions(_ kind: AnswerKind) -> EasyVQASplit {
        let kept: [EasyVQA.Question]
        switch kind {
        case .all: kept = questions
        case .yesNo: kept = questions.filter(\.isYesNo)
        case .open: kept = questions.filter { !$0.isYesNo }
        }
        return EasyVQASplit(split: split, questions: kept, images: images, skipped: skipped)
    }
}

/// Decoded images of one split in a single contiguous buffer of `count * side * side * 3` bytes (row `r` holds the
/// image `ids[r]`), so batches are filled without per-image allocation.
public struct EasyVQAImages: Sendable {
    public let side: Int
    public let ids: [Int]
    public let pixels: [UInt8]
    public let skipped: [SkippedEntry]
    private let rowOfID: [Int: Int]

    public var count: Int { ids.count }
    public var bytesPerImage: Int { side * side * 3 }

    public func row(of id: Int) -> Int? { rowOfID[id] }

    public func image(row: Int) -> Image {
        let start = row * bytesPerImage
        return Image(width: side, height: side, channels: 3, pixels: Array(pixels[start..<start + bytesPerImage]))
    }

    /// Writes image `row` as normalised planar floats `[3, side, side]` into `destination`.
    public func writeCHW(row: Int, into destination: UnsafeMutablePointer<Float>,
                         normalization: ImageNormalization = .symmetric) {
        precondition(row >= 0 && row < count, "EasyVQAImages.writeCHW: row \(row) out of 0..<\(count)")
        let plane = side * side
        pixels.withUnsafeBufferPointer { all in
            let src = all.baseAddress! + row * bytesPerImage
            for ch in 0..<3 {
                let scale = 1 / (255 * normalization.std[ch])
                let shift = -normalization.mean[ch] / normalization.std[ch]
                let dst = destination + ch * plane
                for i in 0..<plane { dst[i] = Float(src[i * 3 + ch]) * scale + shift }
            }
        }
    }

    /// Images `rows` as one normalised batch `[rows.count, 3, side, side]` (what the encoder takes).
    public func pixelTensor(rows: [Int], normalization: ImageNormalization = .symmetric) -> Tensor {
        let pixels = Tensor(uninitializedShape: [rows.count, 3, side, side])
        for (b, row) in rows.enumerated() {
            writeCHW(row: row, into: pixels.data + b * 3 * side * side, normalization: normalization)
        }
        return pixels
    }

    /// Decodes `ids` in parallel; an image that cannot be read or is not `side`x`side` is skipped with the reason.
    static func load(ids: [Int], side: Int, path: (Int) -> String, progress label: String?) -> EasyVQAImages {
        let bytes = side * side * 3
        var pixels = [UInt8](repeating: 0, count: ids.count * bytes)
        var failures = [String?](repeating: nil, count: ids.count)
        let paths = ids.map(path)
        let meter = label.map { Progress($0, total: ids.count, unit: "images") }
        let lock = NSLock()
        let chunk = 64
        let chunks = (ids.count + chunk - 1) / chunk
        pixels.withUnsafeMutableBufferPointer { out in
            failures.withUnsafeMutableBufferPointer { fail in
                let outBase = out.baseAddress, failBase = fail.baseAddress!
                DispatchQueue.concurrentPerform(iterations: chunks) { c in
                    for i in c * chunk..<min((c + 1) * chunk, ids.count) {
                        do {
                            let image = try Image.load(path: paths[i])
                            guard image.width == side && image.height == side else {
                                failBase[i] = "image is \(image.width)x\(image.height); expected \(side)x\(side)"
                                continue
                            }
                            image.pixels.withUnsafeBufferPointer { src in
                                (outBase! + i * bytes).update(from: src.baseAddress!, count: bytes)
                            }
                        } catch {
                            failBase[i] = "\(error)"
                        }
                    }
                    if let meter { lock.lock(); meter.advance(by: min(chunk, ids.count - c * chunk)); lock.unlock() }
                }
            }
        }
        // Compact away the failures so rows stay dense.
        var keptIDs: [Int] = [], skipped: [SkippedEntry] = []
        var write = 0
        for (i, id) in ids.enumerated() {
            if let reason = failures[i] {
                // Decoder errors already start with the path; keep the location column uniform anyway.
                skipped.append(SkippedEntry(paths[i], reason.hasPrefix(paths[i] + ": ")
                                            ? String(reason.dropFirst(paths[i].count + 2)) : reason))
                continue
            }
            if write != i { pixels.withUnsafeMutableBufferPointer { p in
                let b = p.baseAddress!
                (b + write * bytes).update(from: b + i * bytes, count: bytes)
            } }
            keptIDs.append(id)
            write += 1
        }
        pixels.removeLast((ids.count - write) * bytes)
        return EasyVQAImages(side: side, ids: keptIDs, pixels: pixels, skipped: skipped,
                             rowOfID: Dictionary(uniqueKeysWithValues: keptIDs.enumerated().map { ($1, $0) }))
    }
}

/// One row of `questions.json`; a malformed row decodes to `.malformed` instead of failing the whole file.
fileprivate enum LenientRow: Decodable {
    case row(String, String, Int)
    case malformed(String)

    init(from decoder: Decoder) throws {
        do {
            var cells = try decoder.unkeyedContainer()
            if let n = cells.count, n != 3 {
                self = .malformed("has \(n) cells; expected [question, answer, image_id]")
                return
            }
            let text = try cells.decode(String.self)
            let answer = try cells.decode(String.self)
            let id = try cells.decode(Int.self)
            self = .row(text, answer, id)
        } catch {
            self = .malformed("expected [question: string, answer: string, image_id: integer]")
        }
    }
}

/// The dataset's text files are a few megabytes; anything beyond this is refused before it is read.
fileprivate let maxMetadataFileBytes = 256 * 1024 * 1024

fileprivate func readData(_ path: String) throws -> Data {
    guard FileManager.default.fileExists(atPath: path) else {
        throw KVCError.file(path, "not found; run scripts/setup.sh (or set KVC_ASSETS to the assets directory)")
    }
    if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber,
       size.intValue > maxMetadataFileBytes {
        throw KVCError.file(path, "file is \(size.intValue) bytes; expected at most \(maxMetadataFileBytes)")
    }
    do { return try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
        throw KVCError.file(path, "cannot read: \(error.localizedDescription)")
    }
}

fileprivate func readText(_ path: String) throws -> String {
    guard let text = String(data: try readData(path), encoding: .utf8) else {
        throw KVCError.file(path, "not valid UTF-8 text")
    }
    return text
}
