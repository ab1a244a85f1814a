import Foundation

/// A self-contained HTML page (inline CSS and SVG, no scripts or external files) with the comparison tables,
/// accuracy-vs-ratio and attention-error plots per task, speed plots from benchmark runs, and training curves.
public struct HTMLReport {
    public let inputs: ReportInputs

    public init(inputs: ReportInputs) { self.inputs = inputs }

    /// The charts of the report, by file-friendly name (also written as separate SVG files for the README).
    public func charts() -> [(name: String, chart: SVGChart)] {
        var charts: [(String, SVGChart)] = []
        for table in ComparisonTable.build(from: inputs.sweeps) {
            let records = table.rows.map(\.record)
            // Compressed methods over their ratios; the full cache as a reference line across that range; the capsule
            // drawn last (on top) and thicker.
            let compressed = records.filter { $0.method != "full" }
            let lo = compressed.map(\.ratio).min() ?? 0, hi = compressed.map(\.ratio).max() ?? 1
            var series: [SVGChart.Series] = []
            if let full = records.first(where: { $0.method == "full" }) {
                series.append(.init(label: "full float16", points: [(lo, full.accuracy), (hi, full.accuracy)], dashed: true,
                                    colour: "#555555"))
            }
            let methods = orderedMethods(compressed).filter { $0 != "capsule" } + (compressed.contains { $0.method == "capsule" } ? ["capsule"] : [])
            for method in methods {
                series.append(.init(label: method == "capsule" ? "KVCapsule" : method,
                                    points: compressed.filter { $0.method == method }.map { (x: $0.ratio, y: $0.accuracy) },
                                    emphasis: method == "capsule"))
            }
            charts.append(("accuracy-vs-ratio-\(table.chartKey)",
                           SVGChart(title: "Accuracy vs compression ratio (\(table.title))", xLabel: "compression ratio r (vision span)",
                                    yLabel: "accuracy", series: series)))
            // Attention-output error per layer at the most common ratio.
            let withLayers = records.filter { !$0.attentionRelativeError.isEmpty && $0.method != "full" }
            // Ties go to the lower ratio, so the page is the same on every run (dictionary order is not).
            if let ratio = Dictionary(grouping: withLayers, by: \.ratio)
                .max(by: { ($0.value.count, $1.key) < ($1.value.count, $0.key) })?.key {
                let layerSeries = withLayers.filter { $0.ratio == ratio }.map { r in
                    SVGChart.Series(label: r.method, points: r.attentionRelativeError.enumerated().map { (Double($0), $1) })
                }
                charts.append(("attention-error-\(table.chartKey)",
                               SVGChart(title: "Attention output error per layer, r = \(SVGChart.format(ratio)) (\(table.title))",
                                        xLabel: "layer", yLabel: "relative error vs full cache", series: layerSeries)))
            }
        }
        for (i, run) in inputs.benches.enumerated() {
            let budgets = Set(run.rows.compactMap(\.budgetMB))
            let byBudget = budgets.count > 1
            // Several budgets: one line per method and ratio over the budget. One budget: one line per method over r.
            let keys = orderedMethods(run.rows.map { ($0.method, byBudget ? $0.ratio : 0) })
            let series = keys.compactMap { key -> SVGChart.Series? in
                let points = run.rows.filter { $0.method == key.method && (!byBudget || $0.ratio == key.ratio) }
                    .compactMap { r in r.tokensPerSecond.map { (x: byBudget ? (r.budgetMB ?? 0) : r.ratio, y: $0) } }
                let label = byBudget && key.method != "full" ? "\(key.method) r=\(SVGChart.format(key.ratio))" : key.method
                return points.isEmpty ? nil : SVGChart.Series(label: label, points: points)
            }
            // The title names the regime's headline settings; the page states the whole regime under the table.
            let headline = ["images": "images", "budget_mb": "MB", "threads": "threads", "weight_products": "weight products"]
            let regime = run.regime.filter { headline[$0.key] != nil }.map { "\($0.value) \(headline[$0.key]!)" }
                .joined(separator: ", ")
            charts.append(("tokens-per-second-\(i + 1)",
                           SVGChart(title: "Tokens/s under a KV budget" + (regime.isEmpty ? "" : " (\(regime))"),
                                    xLabel: byBudget ? "KV budget (MB)" : "compression ratio r", yLabel: "tokens/s (all sequences)",
                                    series: series)))
        }
        if !inputs.curves.isEmpty {
            var series: [SVGChart.Series] = []
            for curve in inputs.curves {
                series.append(.init(label: curve.name, points: Array(zip(curve.steps, curve.loss)).map { (x: $0.0, y: $0.1) }))
                if !curve.validation.isEmpty {
                    series.append(.init(label: curve.name + " (val)",
                                        points: Array(zip(curve.validationSteps, curve.validation)).map { (x: $0.0, y: $0.1) }, dashed: true))
                }
            }
            charts.append(("training-loss", SVGChart(title: "Training loss", xLabel: "step", yLabel: "loss", series: series)))
        }
        return charts
    }

    public func render() -> String {
        var body = "<h1>KVCapsule results</h1>\n<p class=\"meta\">From: " + inputs.sources.map { "<code>\(escapeXML($0))</code>" }
            .joined(separator: ", ") + "</p>\n"
        let tables = ComparisonTable.build(from: inputs.sweeps)
        let charts = Dictionary(self.charts().map { ($0.name, $0.chart) }, uniquingKeysWith: { a, _ in a })
        for table in tables {
            body += "<h2>\(escapeXML(table.title))</h2>\n"
            let verdicts = table.verdicts
            if !verdicts.isEmpty {
                body += "<ul class=\"verdicts\">" + verdicts.map { "<li>\(escapeXML($0))</li>" }.joined() + "</ul>\n"
            }
            body += table.html()
            for name in ["accuracy-vs-ratio-\(table.chartKey)", "attention-error-\(table.chartKey)"] {
                if let chart = charts[name] { body += "<figure>\(chart.render())</figure>\n" }
            }
        }
        for (i, run) in inputs.benches.enumerated() {
            body += "<h2>Speed: <code>\(escapeXML(run.source))</code></h2>\n"
            if !run.regime.isEmpty {
                body += "<p class=\"meta\">Regime: " + run.regime.map { "\(escapeXML($0.key)) = \(escapeXML($0.value))" }
                    .joined(separator: "; ") + "</p>\n"
            }
            body += benchTable(run)
            if let chart = charts["tokens-per-second-\(i + 1)"] { body += "<figure>\(chart.render())</figure>\n" }
        }
        if let chart = charts["training-loss"] { body += "<h2>Training</h2>\n<figure>\(chart.render())</figure>\n" }
        return """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>KVCapsule results</title>
        <style>
        body { font-family: Helvetica, Arial, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
        table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
        th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
        th:first-child, td:first-child { text-align: left; }
        tr.capsule { background: #eef5fb; font-weight: bold; }
        .meta { color: #666; font-size: 12px; }
        figure { margin: 1em 0; }
        </style></head><body>
        \(body)</body></html>

        """
    }

    func benchTable(_ run: BenchRun) -> String {
        let columns = ["method", "ratio", "KV bytes", "vs full", "decode tok/s", "overhead share", "budget MB", "batch", "tokens/s"]
        var s = "<table>\n<tr>" + columns.map { "<th>\($0)</th>" }.joined() + "</tr>\n"
        for r in run.rows {
            var cells = [r.method, SVGChart.format(r.ratio), r.kvBytes.map { String(Int($0)) } ?? ""]
            cells.append(zip2(r.kvBytesFull, r.kvBytes).map { String(format: "%.2fx less", $0 / $1) } ?? "")
            cells.append(r.decodeTokensPerSecond.map { String(format: "%.1f", $0) } ?? "")
            cells.append(r.overheadShare.map(pct) ?? "")
            cells.append(r.budgetMB.map(SVGChart.format) ?? "")
            cells.append(r.batch.map(String.init) ?? "")
            cells.append(r.tokensPerSecond.map { String(format: "%.1f", $0) } ?? "")
            s += "<tr>" + cells.map { "<td>\(escapeXML($0))</td>" }.joined() + "</tr>\n"
        }
        return s + "</table>\n"
    }

    private func orderedMethods(_ records: [SweepRecord]) -> [String] {
        var seen: [String] = []
        for m in ["full", "capsule"] + records.map(\.method) where !seen.contains(m) && records.contains(where: { $0.method == m }) {
            seen.append(m)
        }
        return seen
    }

    private func orderedMethods(_ keys: [(String, Double)]) -> [(method: String, ratio: Double)] {
        var seen: [(method: String, ratio: Double)] = []
        for k in keys where !seen.contains(where: { $0.method == k.0 && $0.ratio == k.1 }) { seen.append((k.0, k.1)) }
        return seen
    }
}
