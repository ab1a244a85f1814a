import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
@testable import KVCReport

final class ReportTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "kvc-report-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: directory) }

    private func write(_ name: String, _ text: String) throws -> String {
        let path = directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func line(_ method: String, ratio: Double, accuracy: Double, images: Int = 1, task: String = "easy-vqa") -> String {
        """
        {"method":"\(method)","ratio":\(ratio),"images":\(images),"task":"\(task)","split":"test","n":200,\
        "accuracy":\(accuracy),"accuracy_full":0.9,"agreement":0.95,"top1_agreement":0.97,"kl":0.01,\
        "attn_rel_error":[0.1,0.2,0.3],"kv_bytes":1000,"kv_bytes_full":2000,"kv_bytes_vision":400,"kv_bytes_vision_full":1000}
        """
    }

    func testSweepFileBecomesTablesWithDeltasAndVerdicts() throws {
        let sweep = try write("sweep.jsonl", [
            line("full", ratio: 0, accuracy: 0.9), line("capsule", ratio: 0.6, accuracy: 0.88),
            line("strided", ratio: 0.6, accuracy: 0.80), line("h2o", ratio: 0.6, accuracy: 0.85),
            line("capsule", ratio: 0.8, accuracy: 0.70), line("snapkv", ratio: 0.8, accuracy: 0.75),
            line("full", ratio: 0, accuracy: 0.8, images: 4), line("capsule", ratio: 0.6, accuracy: 0.78, images: 4),
        ].joined(separator: "\n") + "\n")
        let inputs = try ReportInputs.load(paths: [sweep])
        XCTAssertEqual(inputs.sweeps.count, 8)
        let tables = ComparisonTable.build(from: inputs.sweeps)
        XCTAssertEqual(tables.map(\.images), [1, 4])
        let single = tables[0]
        XCTAssertEqual(single.rows.first?.record.method, "full", "the full cache leads the table")
        let capsule = try XCTUnwrap(single.rows.first { $0.record.method == "capsule" && $0.record.ratio == 0.6 })
        XCTAssertEqual(try XCTUnwrap(capsule.deltaPoints), -2, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(capsule.record.visionReduction), 2.5, accuracy: 1e-12)
        let verdicts = single.verdicts
        XCTAssertEqual(verdicts.count, 2)
        XCTAssertTrue(verdicts[0].contains("beats every eviction baseline") && verdicts[0].contains("h2o"), verdicts[0])
        XCTAssertTrue(verdicts[1].contains("snapkv (75.0%) matches or beats KVCapsule (70.0%)"), verdicts[1])
        XCTAssertTrue(single.markdown().contains("| capsule | 0.6 |"))
    }

    func testTablesOfOneAnswerKindGetTheirOwnPlots() throws {
        let sweep = try write("sweep.jsonl", [
            line("full", ratio: 0, accuracy: 0.9), line("capsule", ratio: 0.6, accuracy: 0.88),
            line("full", ratio: 0, accuracy: 0.99, task: "easy-vqa-open"),
            line("capsule", ratio: 0.6, accuracy: 0.98, task: "easy-vqa-open"),
        ].joined(separator: "\n"))
        let report = HTMLReport(inputs: try ReportInputs.load(paths: [sweep]))
        XCTAssertEqual(report.charts().map(\.name), ["accuracy-vs-ratio-k1", "attention-error-k1",
                                                     "accuracy-vs-ratio-k1-open", "attention-error-k1-open"])
        XCTAssertEqual(report.render().components(separatedBy: "<figure>").count - 1, 4, "each table shows its own two plots")
    }

    func testReportIsWellFormedAndSelfContained() throws {
        let sweep = try write("sweep.jsonl", [line("full", ratio: 0, accuracy: 0.9), line("capsule", ratio: 0.6, accuracy: 0.88),
                                              line("random", ratio: 0.6, accuracy: 0.5)].joined(separator: "\n"))
        let bench = try write("bench.json", """
        {"regime":{"images":8,"threads":2},"rows":[{"method":"full","ratio":0,"budget_mb":64,"batch":2,"tps":100},
        {"method":"capsule-fused","ratio":0.6,"budget_mb":64,"batch":5,"tps":210,"kv_bytes":10,"kv_bytes_full":25}]}
        """)
        let metrics = try write("metrics.jsonl", (1...5).map { "{\"step\":\($0),\"loss\":\(5.0 / Double($0))}" }
            .joined(separator: "\n") + "\n{\"step\":5,\"val_loss\":1.5}\n")
        let report = HTMLReport(inputs: try ReportInputs.load(paths: [sweep, bench, metrics]))
        let html = report.render()
        XCTAssertFalse(html.contains("<script"), "no scripts")
        XCTAssertFalse(html.contains("http://") && html.contains("src=\"http"), "no external resources")
        XCTAssertEqual(report.charts().map(\.name), ["accuracy-vs-ratio-k1", "attention-error-k1", "tokens-per-second-1",
                                                     "training-loss"])
        for (name, chart) in report.charts() {
            let svg = chart.render()
            let parser = XMLParser(data: Data(svg.utf8))
            XCTAssertTrue(parser.parse(), "\(name) is not well-formed XML: \(String(describing: parser.parserError))")
            XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1,
                           chart.series.filter { $0.points.count > 1 }.count, name)
        }
        XCTAssertTrue(html.contains("2.50x less"), "bench bytes ratio shown")
        XCTAssertTrue(html.contains("images = 8"), "the regime is stated")
    }

    /// `kvc-bench capsule --budget-mb 15 24`: one row per method and budget, the budgets listed in the regime.
    func testBudgetSweepIsPlottedOverTheBudget() throws {
        let bench = try write("sweep-bench.json", """
        {"regime":{"images":8,"budget_mb":[15,24],"weight_products":"bfloat16"},"rows":[
        {"method":"full","ratio":0,"budget_mb":15,"batch":1,"tps":150},{"method":"capsule-fused","ratio":0.6,"budget_mb":15,"batch":2,"tps":260},
        {"method":"full","ratio":0,"budget_mb":24,"batch":1,"tps":150},{"method":"capsule-fused","ratio":0.6,"budget_mb":24,"batch":3,"tps":330}]}
        """)
        let report = HTMLReport(inputs: try ReportInputs.load(paths: [bench]))
        let chart = try XCTUnwrap(report.charts().first { $0.name.hasPrefix("tokens-per-second") }?.chart)
        XCTAssertEqual(chart.xLabel, "KV budget (MB)")
        XCTAssertEqual(chart.series.map { $0.points.map(\.x) }, [[15, 24], [15, 24]], "one line per method over the budgets")
        XCTAssertTrue(report.render().contains("budget_mb = 15, 24"), "the regime lists the budgets, not an array's description")
        XCTAssertTrue(chart.title.contains("bfloat16 weight products"), "the title names the arithmetic: \(chart.title)")
    }

    func testChartMapsPointsIntoThePlotArea() {
        let chart = SVGChart(title: "t", xLabel: "x", yLabel: "y",
                             series: [.init(label: "a & b", points: [(0, 0), (1, 1)])], yRange: 0...1)
        let svg = chart.render()
        XCTAssertTrue(svg.contains("a &amp; b"), "labels are escaped")
        // The first point sits at the bottom-left corner of the plot area, the second at the top-right.
        XCTAssertTrue(svg.contains("points=\"64.0,328.0 470.0,36.0\""), svg)
        let axis = SVGChart.niceRange(0.13, 0.87)
        XCTAssertEqual(axis.lo, 0, accuracy: 1e-12)
        XCTAssertEqual(axis.hi, 1, accuracy: 1e-12)
        XCTAssertEqual(axis.ticks.count, 6)
    }

    func testBadInputNamesFileLineAndField() throws {
        let notJSON = try write("bad.jsonl", line("full", ratio: 0, accuracy: 0.9) + "\n{oops\n")
        XCTAssertThrowsError(try ReportInputs.load(paths: [notJSON])) { error in
            XCTAssertTrue("\(error)".contains("bad.jsonl") && "\(error)".contains("line 2"), "\(error)")
        }
        let missing = try write("missing.jsonl", #"{"method":"capsule","ratio":0.6,"n":3}"#)
        XCTAssertThrowsError(try ReportInputs.load(paths: [missing])) { error in
            XCTAssertTrue("\(error)".contains("missing.jsonl:1") && "\(error)".contains("`accuracy`"), "\(error)")
        }
        let wrongType = try write("type.jsonl", #"{"method":"capsule","ratio":"0.6","n":3,"accuracy":0.5}"#)
        XCTAssertThrowsError(try ReportInputs.load(paths: [wrongType])) { error in
            XCTAssertTrue("\(error)".contains("`ratio` must be a finite number"), "\(error)")
        }
        let unknown = try write("other.jsonl", #"{"hello":1}"#)
        XCTAssertThrowsError(try ReportInputs.load(paths: [unknown])) { error in
            XCTAssertTrue("\(error)".contains("neither a sweep result"), "\(error)")
        }
        XCTAssertThrowsError(try ReportInputs.load(paths: [directory + "/absent.jsonl"])) { error in
            XCTAssertTrue("\(error)".contains("absent.jsonl"), "\(error)")
        }
    }
}
