import Foundation

/// The comparison tables of a report: every method at every ratio on a task, and the verdicts that the issue asks
/// for (does KVCapsule beat every eviction baseline at the same bytes, and where not, who wins).
public struct ComparisonTable {
    public struct Row {
        public var record: SweepRecord
        /// Accuracy minus the full cache's on the same questions, in points (nil when the full cache was not run).
        public var deltaPoints: Double?
    }

    public let images: Int
    public let task: String
    public let rows: [Row]

    /// Methods that drop or evict tokens (the baselines the capsule must beat at equal bytes).
    public static let evictionMethods: Set<String> = ["strided", "random", "h2o", "snapkv", "fastv"]

    /// One table per (task, images), rows ordered by ratio, then method, the full cache first.
    public static func build(from records: [SweepRecord]) -> [ComparisonTable] {
        let groups = Dictionary(grouping: records) { "\($0.task)\u{1}\($0.images)" }
        return groups.values.map { group -> ComparisonTable in
            let fullAccuracy = group.first { $0.method == "full" }?.accuracy
            let rows = group.sorted {
                ($0.method == "full" ? -1 : $0.ratio, $0.method) < ($1.method == "full" ? -1 : $1.ratio, $1.method)
            }.map { r in Row(record: r, deltaPoints: (r.accuracyFull ?? fullAccuracy).map { 100 * (r.accuracy - $0) }) }
            return ComparisonTable(images: group[0].images, task: group[0].task, rows: rows)
        }.sorted { ($0.images, $0.task) < ($1.images, $1.task) }
    }

    /// For each ratio where the capsule ran: which eviction baselines it beats, and which beat or tie it.
    public var verdicts: [String] {
        let byRatio = Dictionary(grouping: rows.map(\.record).filter { $0.method != "full" }) { ($0.ratio * 1000).rounded() / 1000 }
        return byRatio.keys.sorted().compactMap { ratio -> String? in
            let here = byRatio[ratio]!
            guard let capsule = here.first(where: { $0.method == "capsule" }) else { return nil }
            let rivals = here.filter { Self.evictionMethods.contains($0.method) }
            guard !rivals.isEmpty else { return nil }
            let better = rivals.filter { $0.accuracy >= capsule.accuracy }
            let r = SVGChart.format(ratio)
            let bestAgreement = rivals.compactMap { rival in rival.agreement.map { (rival.method, $0) } }.max { $0.1 < $1.1 }
            let agreementNote = zip2(capsule.agreement, bestAgreement).map { c, b in
                "; agreement with the full cache's answers: KVCapsule \(pct(c)), best baseline \(b.0) \(pct(b.1))"
            } ?? ""
            if better.isEmpty {
                let best = rivals.max { $0.accuracy < $1.accuracy }!
                return "r = \(r): KVCapsule (\(pct(capsule.accuracy))) beats every eviction baseline; the best, "
                    + "\(best.method), reaches \(pct(best.accuracy))" + agreementNote + "."
            }
            let names = better.map { "\($0.method) (\(pct($0.accuracy)))" }.joined(separator: ", ")
            return "r = \(r): " + names + (better.count == 1 ? " matches or beats" : " match or beat")
                + " KVCapsule (\(pct(capsule.accuracy))) in accuracy" + agreementNote + "."
        }
    }

    static let columns = ["method", "r nominal", "r measured", "vision KV ÷", "whole KV ÷", "accuracy", "Δ vs full",
                          "agreement", "top-1 agr.", "KL", "n"]

    func cells(_ row: Row) -> [String] {
        let r = row.record
        return [r.method, r.method == "full" ? "0" : SVGChart.format(r.ratio), r.ratioMeasured.map { String(format: "%.3f", $0) } ?? "",
                r.visionReduction.map { String(format: "%.2fx", $0) } ?? "",
                r.cacheReduction.map { String(format: "%.2fx", $0) } ?? "",
                pct(r.accuracy), row.deltaPoints.map { String(format: "%+.1f", $0) } ?? "",
                r.agreement.map(pct) ?? "", r.top1Agreement.map(pct) ?? "", r.kl.map { String(format: "%.4f", $0) } ?? "",
                String(r.n)]
    }

    public var title: String { "\(task), \(images) image\(images == 1 ? "" : "s") per prompt" }

    /// Names this table's plots apart from other tables': `k4`, or `k1-open` for a task restricted to one answer kind
    /// (`easy-vqa-open`, `easy-vqa-multi-open`).
    public var chartKey: String {
        let kind = ["-open", "-yes-no"].first { task.hasSuffix($0) } ?? ""
        return "k\(images)\(kind)"
    }

    public func markdown() -> String {
        var s = "| " + Self.columns.joined(separator: " | ") + " |\n"
        s += "|" + String(repeating: "---|", count: Self.columns.count) + "\n"
        for row in rows { s += "| " + cells(row).joined(separator: " | ") + " |\n" }
        return s
    }

    public func html() -> String {
        var s = "<table>\n<tr>" + Self.columns.map { "<th>\(escapeXML($0))</th>" }.joined() + "</tr>\n"
        for row in rows {
            let highlight = row.record.method == "capsule" ? " class=\"capsule\"" : ""
            s += "<tr\(highlight)>" + cells(row).map { "<td>\(escapeXML($0))</td>" }.joined() + "</tr>\n"
        }
        return s + "</table>\n"
    }
}

func pct(_ v: Double) -> String { String(format: "%.1f%%", 100 * v) }

/// Both values, when both are present.
func zip2<A, B>(_ a: A?, _ b: B?) -> (A, B)? {
    guard let a, let b else { return nil }
    return (a, b)
}
