import KVCCore
import KVCVision

/// One prompt to collect: K images and one question about one of them.
public struct CollectionItem: Equatable, Sendable {
    /// Position in the plan (decides the shard it belongs to).
    public var index: Int
    /// Stable id: split and image ids, e.g. `train/17` or `train/17+18+19`.
    public var id: String
    public var imageIDs: [Int]
    public var imagePaths: [String]
    /// Which image (0-based) the question is about; 0 for single-image prompts.
    public var targetImage: Int
    /// The question as put to the model ("In image 2, ..." for multi-image prompts).
    public var question: String
    public var answer: String
}

/// The deterministic list of prompts a collection run covers, and how it is cut into shards.
///
/// Everything is a function of (data set, split, images per prompt, seed): the same command always plans the same
/// items in the same order, so shard `s` always covers items `s*M ..< (s+1)*M` and a rerun or a `--shard i/n` process
/// on another machine agrees on what every shard holds.
public struct CollectionPlan: Sendable {
    public let items: [CollectionItem]
    public let samplesPerShard: Int
    /// Entries of the data set that could not become items (malformed question rows), for the summary.
    public let datasetSkips: [SkippedEntry]

    public init(items: [CollectionItem], samplesPerShard: Int, datasetSkips: [SkippedEntry] = []) {
        precondition(samplesPerShard > 0, "CollectionPlan: samplesPerShard must be positive")
        self.items = items
        self.samplesPerShard = samplesPerShard
        self.datasetSkips = datasetSkips
    }

    public var shardCount: Int { (items.count + samplesPerShard - 1) / samplesPerShard }

    public func items(inShard s: Int) -> ArraySlice<CollectionItem> {
        items[s * samplesPerShard..<min((s + 1) * samplesPerShard, items.count)]
    }

    /// easy-VQA: images in ascending id order, grouped `imagesPerPrompt` at a time (a trailing incomplete group is
    /// dropped); per group one question about one image, chosen by a generator seeded with (seed, item index).
    /// Images without questions are not planned. Images are read later, so an unreadable one becomes a recorded
    /// skip in its shard rather than an error here.
    public static func easyVQA(_ dataset: EasyVQA, split: EasyVQA.Split, imagesPerPrompt: Int = 1, seed: UInt64 = 0,
                               limit: Int? = nil, samplesPerShard: Int = 64) throws -> CollectionPlan {
        guard (1...64).contains(imagesPerPrompt) else {
            throw KVCError("images per prompt is \(imagesPerPrompt); expected 1...64")
        }
        guard samplesPerShard > 0 else { throw KVCError("samples per shard is \(samplesPerShard); expected at least 1") }
        if let limit, limit < 0 { throw KVCError("limit is \(limit); expected at least 0") }
        let (questions, skipped) = try dataset.questions(split)
        let byImage = Dictionary(grouping: questions, by: \.imageID)
        let imageIDs = byImage.keys.sorted()
        let groups = imageIDs.count / imagesPerPrompt
        let count = min(groups, limit ?? groups)
        var items: [CollectionItem] = []
        items.reserveCapacity(count)
        for index in 0..<count {
            let ids = Array(imageIDs[index * imagesPerPrompt..<(index + 1) * imagesPerPrompt])
            var rng = SeededRandom(seed: itemSeed(seed, index))
            let target = imagesPerPrompt == 1 ? 0 : rng.nextInt(below: imagesPerPrompt)
            let candidates = byImage[ids[target]]!
            let q = candidates[rng.nextInt(below: candidates.count)]
            items.append(CollectionItem(
                index: index, id: "\(split.rawValue)/" + ids.map(String.init).joined(separator: "+"),
                imageIDs: ids, imagePaths: ids.map { dataset.imagePath(split, id: $0) }, targetImage: target,
                question: imagesPerPrompt == 1 ? q.text : Self.aboutImage(target, question: q.text), answer: q.answer))
        }
        return CollectionPlan(items: items, samplesPerShard: samplesPerShard, datasetSkips: skipped)
    }

    /// "What shape is in the image?" about image 2 (0-based 1) becomes "In image 2, what shape is in the image?".
    static func aboutImage(_ target: Int, question: String) -> String {
        let lowered = question.prefix(1).lowercased() + question.dropFirst()
        return "In image \(target + 1), \(lowered)"
    }
}

/// Independent, well-mixed streams per item, so an item's choice does not depend on which items came before it.
fileprivate func itemSeed(_ seed: UInt64, _ index: Int) -> UInt64 {
    var z = seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
