import ArgumentParser
import Foundation
import KVCCore
import KVCReport

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-report",
        abstract: "Turn sweep results, benchmark runs and training metrics into one self-contained HTML page.",
        discussion: """
        Each input is recognised by its content:
          - JSON lines with `method` and `accuracy` (kvc-sweep output): a comparison table per task and number of
            images, verdicts (does KVCapsule beat every eviction baseline at the same bytes), accuracy-vs-ratio and
            per-layer attention-error plots;
          - one JSON object with `rows` (kvc-bench capsule --json): a speed table and a tokens/s plot, with its regime;
          - JSON lines with `step` and `loss` (kvc-train metrics.jsonl): training curves.
        The page has inline SVG and CSS only (no scripts, no external files). --svg-dir also writes every plot as an
        SVG file and --markdown the comparison tables, for the README.

        Example:
          kvc-report checkpoints/results/sweep.jsonl runs/bench.json runs/capsule-r0.6/metrics.jsonl -o report.html
        """)

    @Argument(help: "Results files (sweep JSONL, kvc-bench JSON, training metrics JSONL).")
    var inputs: [String]

    @Option(name: .shortAndLong, help: "The HTML page to write.")
    var output: String = "report.html"

    @Option(help: "Also write each plot as DIR/NAME.svg.")
    var svgDir: String?

    @Option(help: "Also write the comparison tables and verdicts as Markdown to this file.")
    var markdown: String?

    func run() throws {
        let inputs = try ReportInputs.load(paths: inputs)
        let report = HTMLReport(inputs: inputs)
        try AtomicFile.write(Data(report.render().utf8), to: output)
        var written = [output]
        if let svgDir {
            for (name, chart) in report.charts() {
                let path = svgDir + "/" + name + ".svg"
                try AtomicFile.write(Data(chart.render().utf8), to: path)
                written.append(path)
            }
        }
        if let markdown {
            let text = ComparisonTable.build(from: inputs.sweeps).map { table in
                "### \(table.title)\n\n" + table.verdicts.map { "- \($0)\n" }.joined() + "\n" + table.markdown()
            }.joined(separator: "\n")
            try AtomicFile.write(Data(text.utf8), to: markdown)
            written.append(markdown)
        }
        print("kvc-report: \(inputs.sweeps.count) sweep results, \(inputs.benches.count) benchmark runs, "
              + "\(inputs.curves.count) training curves → " + written.joined(separator: ", "))
    }
}

Report.main()
