import Foundation
import KVCCore

/// One line of a `kvc-sweep` results file: one method at one ratio on one task (JSONL schema in the README).
public struct SweepRecord: Sendable, Equatable {
    public var method: String
    public var ratio: Double
    public var ratioMeasured: Double?
    public var images: Int
    public var task: String
    public var n: Int
    public var accuracy: Double
    public var accuracyFull: Double?
    public var agreement: Double?
    public var top1Agreement: Double?
    public var kl: Double?
    public var attentionRelativeError: [Double]
    public var kvBytes: Double?
    public var kvBytesFull: Double?
    public var kvBytesVision: Double?
    public var kvBytesVisionFull: Double?
    public var questionsPerSecond: Double?

    /// Vision-span bytes of the float16 full cache over the method's, when both were measured.
    public var visionReduction: Double? {
        guard let v = kvBytesVision, let f = kvBytesVisionFull, v > 0 else { return nil }
        return f / v
    }

    /// Whole-cache bytes of the float16 full cache over the method's.
    public var cacheReduction: Double? {
        guard let v = kvBytes, let f = kvBytesFull, v > 0 else { return nil }
        return f / v
    }
}

/// One row of `kvc-bench capsule --json`: a cache method's bytes and decode speed, single-stream and under a budget.
public struct BenchRow: Sendable, Equatable {
    public var method: String
    public var ratio: Double
    public var budgetMB: Double?
    public var batch: Int?
    public var tokensPerSecond: Double?
    public var decodeTokensPerSecond: Double?
    public var overheadShare: Double?
    public var kvBytes: Double?
    public var kvBytesFull: Double?
}

/// A benchmark run: its rows and the regime it states (images, context, budget, threads ...), kept as text.
public struct BenchRun: Sendable {
    public var source: String
    public var regime: [(key: String, value: String)]
    public var rows: [BenchRow]
}

/// A training run's metrics over steps (`metrics.jsonl` of kvc-train): the loss, and the validation loss when logged.
public struct TrainingCurve: Sendable, Equatable {
    public var name: String
    public var steps: [Double]
    public var loss: [Double]
    public var validationSteps: [Double]
    public var validation: [Double]
}

/// Everything a report is made of, read from the files given on the command line.
public struct ReportInputs: Sendable {
    public var sweeps: [SweepRecord] = []
    public var benches: [BenchRun] = []
    public var curves: [TrainingCurve] = []
    public var sources: [String] = []

    public init() {}

    /// Reads each file and sorts it by content: JSON lines with `method` and `accuracy` are sweep results, lines with
    /// `step` and `loss` a training curve, a single JSON object with `rows` a benchmark run.
    public static func load(paths: [String]) throws -> ReportInputs {
        var inputs = ReportInputs()
        for path in paths {
            guard let data = FileManager.default.contents(atPath: path) else { throw KVCError.file(path, "cannot read") }
            guard data.count <= 256 << 20 else { throw KVCError.file(path, "larger than 256 MiB; not a results file") }
            guard let text = String(data: data, encoding: .utf8) else { throw KVCError.file(path, "not UTF-8 text") }
            inputs.sources.append(path)
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if let whole = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any], whole["rows"] != nil {
                inputs.benches.append(try BenchRun(object: whole, source: path))
                continue
            }
            var objects: [(line: Int, object: [String: Any])] = []
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let s = line.trimmingCharacters(in: .whitespaces)
                if s.isEmpty { continue }
                guard let object = (try? JSONSerialization.jsonObject(with: Data(s.utf8))) as? [String: Any] else {
                    throw KVCError.file(path, "line \(i + 1): not a JSON object")
                }
                objects.append((i + 1, object))
            }
            guard let first = objects.first?.object else { throw KVCError.file(path, "no JSON lines") }
            if first["method"] != nil {
                for (line, object) in objects { inputs.sweeps.append(try SweepRecord(object: object, at: "\(path):\(line)")) }
            } else if first["step"] != nil {
                inputs.curves.append(try TrainingCurve(objects: objects, path: path))
            } else {
                throw KVCError.file(path, "line \(objects[0].line): neither a sweep result (needs `method`) nor training "
                                    + "metrics (needs `step`) nor a benchmark run (a JSON object with `rows`)")
            }
        }
        return inputs
    }
}

// MARK: - Decoding with errors that name the file, line and field

private struct Fields {
    let object: [String: Any]
    let place: String

    func number(_ key: String) throws -> Double {
        guard let value = object[key] else { throw KVCError("\(place): missing field `\(key)`") }
        guard let n = value as? NSNumber, n.doubleValue.isFinite else {
            throw KVCError("\(place): field `\(key)` must be a finite number, found \(value)")
        }
        return n.doubleValue
    }

    func optionalNumber(_ key: String) throws -> Double? {
        guard let value = object[key], !(value is NSNull) else { return nil }
        return try number(key)
    }

    func string(_ key: String) throws -> String {
        guard let value = object[key] else { throw KVCError("\(place): missing field `\(key)`") }
        guard let s = value as? String else { throw KVCError("\(place): field `\(key)` must be a string, found \(value)") }
        return s
    }

    func numbers(_ key: String) throws -> [Double] {
        guard let value = object[key], !(value is NSNull) else { return [] }
        guard let list = value as? [Any] else { throw KVCError("\(place): field `\(key)` must be an array of numbers") }
        return try list.enumerated().map { i, v in
            guard let n = v as? NSNumber, n.doubleValue.isFinite else {
                throw KVCError("\(place): field `\(key)[\(i)]` must be a finite number, found \(v)")
            }
            return n.doubleValue
        }
    }
}

extension SweepRecord {
    init(object: [String: Any], at place: String) throws {
        let f = Fields(object: object, place: place)
        method = try f.string("method")
        ratio = try f.number("ratio")
        ratioMeasured = try f.optionalNumber("ratio_measured")
        images = Int(try f.optionalNumber("images") ?? 1)
        task = (try? f.string("task")) ?? "easy-vqa"
        n = Int(try f.number("n"))
        accuracy = try f.number("accuracy")
        accuracyFull = try f.optionalNumber("accuracy_full")
        agreement = try f.optionalNumber("agreement")
        top1Agreement = try f.optionalNumber("top1_agreement")
        kl = try f.optionalNumber("kl")
        attentionRelativeError = try f.numbers("attn_rel_error")
        kvBytes = try f.optionalNumber("kv_bytes")
        kvBytesFull = try f.optionalNumber("kv_bytes_full")
        kvBytesVision = try f.optionalNumber("kv_bytes_vision")
        kvBytesVisionFull = try f.optionalNumber("kv_bytes_vision_full")
        questionsPerSecond = try f.optionalNumber("questions_per_s")
        guard (0...1).contains(accuracy) else { throw KVCError("\(place): field `accuracy` must be in 0...1, found \(accuracy)") }
    }
}

extension BenchRun {
    init(object: [String: Any], source: String) throws {
        self.source = source
        let regimeObject = object["regime"] as? [String: Any] ?? [:]
        // A list (the budgets of a sweep) reads as "15, 24, 30", not as the array's debug description.
        regime = regimeObject.keys.sorted().map { key in
            let value = regimeObject[key]!
            return (key, (value as? [Any]).map { $0.map { "\($0)" }.joined(separator: ", ") } ?? "\(value)")
        }
        guard let list = object["rows"] as? [Any] else { throw KVCError.file(source, "field `rows` must be an array") }
        rows = try list.enumerated().map { i, item in
            guard let row = item as? [String: Any] else { throw KVCError.file(source, "rows[\(i)] is not an object") }
            let f = Fields(object: row, place: "\(source): rows[\(i)]")
            return BenchRow(method: try f.string("method"), ratio: try f.optionalNumber("ratio") ?? 0,
                            budgetMB: try f.optionalNumber("budget_mb"), batch: try f.optionalNumber("batch").map { Int($0) },
                            tokensPerSecond: try f.optionalNumber("tps"), decodeTokensPerSecond: try f.optionalNumber("decode_tps"),
                            overheadShare: try f.optionalNumber("overhead_share"), kvBytes: try f.optionalNumber("kv_bytes"),
                            kvBytesFull: try f.optionalNumber("kv_bytes_full"))
        }
    }
}

extension TrainingCurve {
    /// Lines with `step` and `loss` make the curve; lines with `val_loss` (or `validation_loss`) the validation points.
    init(objects: [(line: Int, object: [String: Any])], path: String) throws {
        // A run directory names its metrics file (runs/capsule-r0.6/metrics.jsonl → capsule-r0.6).
        let url = URL(fileURLWithPath: path)
        name = url.lastPathComponent == "metrics.jsonl" ? url.deletingLastPathComponent().lastPathComponent
            : url.deletingPathExtension().lastPathComponent
        steps = []; loss = []; validationSteps = []; validation = []
        for (line, object) in objects {
            let f = Fields(object: object, place: "\(path):\(line)")
            let step = try f.number("step")
            if let l = try f.optionalNumber("loss") { steps.append(step); loss.append(l) }
            if let v = try f.optionalNumber("val_loss") ?? f.optionalNumber("validation_loss") {
                validationSteps.append(step); validation.append(v)
            }
        }
        guard !steps.isEmpty || !validation.isEmpty else { throw KVCError.file(path, "no line has `loss` or `val_loss`") }
    }
}
