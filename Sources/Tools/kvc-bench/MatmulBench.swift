import ArgumentParser
import Foundation
import KVCCore
import KVCTensor

/// `kvc-bench matmul`: the library's `matmul` (tensor allocation, shape checks, tape bookkeeping included)
/// against a direct `cblas_sgemm` call through `BLAS.gemm` into a preallocated buffer, square n x n float32.
struct MatmulBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "matmul",
        abstract: "Library matmul vs direct cblas_sgemm (n x n, float32).",
        discussion: """
        Both sides run interleaved in the same process with the same OpenBLAS thread count, so machine load hits both \
        alike. Each size is timed until --seconds of work have accumulated per side; the table shows the best and \
        the median time per product and library speed as a percentage of direct BLAS (best vs best). \
        Target: ≥ 95% for n ≥ 512.
        """)

    @Option(help: "Matrix sizes, comma-separated.") var sizes: String = "256,512,1024,2048"
    @Option(help: "OpenBLAS threads.") var threads: Int = 2
    @Option(help: "Seconds of timed work per size and side.") var seconds: Double = 1.0
    @Flag(help: "Print JSON instead of a table.") var json = false

    struct Row: Codable {
        let n: Int
        let directBestMs: Double, directMedianMs: Double
        let libraryBestMs: Double, libraryMedianMs: Double
        let directGFLOPS: Double, libraryGFLOPS: Double
        let libraryPercentOfDirect: Double
    }

    struct Report: Codable {
        let benchmark: String
        let threads: Int
        let openblasCoretype: String?
        let rows: [Row]
    }

    func run() throws {
        let ns = sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !ns.isEmpty, ns.allSatisfy({ $0 > 0 && $0 <= 8192 }) else {
            throw ValidationError("--sizes must be positive integers up to 8192, got '\(sizes)'")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be ≥ 1") }
        BLAS.threads = threads
        var rng = SeededRandom(seed: 1)
        var rows: [Row] = []
        for n in ns {
            let a = Tensor.randn([n, n], rng: &rng), b = Tensor.randn([n, n], rng: &rng)
            let c = Tensor(uninitializedShape: [n, n])
            let direct = { BLAS.gemm(m: n, n: n, k: n, a: a.data, b: b.data, c: c.data) }
            let library = { _ = matmul(a, b) }
            // Warm up both (thread pool start, page faults of the first output buffers).
            direct(); library(); direct(); library()
            var tDirect: [Double] = [], tLibrary: [Double] = []
            while tDirect.reduce(0, +) < seconds || tDirect.count < 3 {
                tDirect.append(TensorBench.time(direct))
                tLibrary.append(TensorBench.time(library))
            }
            let flop = 2 * Double(n) * Double(n) * Double(n)
            let (db, lb) = (tDirect.min()!, tLibrary.min()!)
            rows.append(Row(n: n, directBestMs: db * 1e3, directMedianMs: TensorBench.median(tDirect) * 1e3,
                            libraryBestMs: lb * 1e3, libraryMedianMs: TensorBench.median(tLibrary) * 1e3,
                            directGFLOPS: flop / db / 1e9, libraryGFLOPS: flop / lb / 1e9,
                            libraryPercentOfDirect: 100 * db / lb))
        }
        let report = Report(benchmark: "matmul", threads: threads,
                            openblasCoretype: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"], rows: rows)
        if json {
            TensorBench.printJSON(report)
            return
        }
        print("matmul n x n float32, \(threads) OpenBLAS threads"
              + (report.openblasCoretype.map { ", OPENBLAS_CORETYPE=\($0)" } ?? ""))
        let ms = TensorBench.ms, f1: (Double) -> String = { String(format: "%.1f", $0) }
        TensorBench.printTable(
            header: ["n", "direct best", "median", "GFLOP/s", "library best", "median", "GFLOP/s", "library/direct"],
            rows: rows.map { r in
                ["\(r.n)", ms(r.directBestMs), ms(r.directMedianMs), f1(r.directGFLOPS), ms(r.libraryBestMs),
                 ms(r.libraryMedianMs), f1(r.libraryGFLOPS), f1(r.libraryPercentOfDirect) + "%"]
            })
    }
}

// MARK: Helpers shared by the benchmarks of this target (timing, medians, tables)

enum TensorBench {
    /// Wall time of one call, in seconds.
    static func time(_ body: () -> Void) -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        guard !s.isEmpty else { return .nan }
        return s.count % 2 == 1 ? s[s.count / 2] : 0.5 * (s[s.count / 2 - 1] + s[s.count / 2])
    }

    static func ms(_ x: Double) -> String { String(format: "%.2f ms", x) }

    /// Prints right-aligned columns as wide as their widest cell.
    static func printTable(header: [String], rows: [[String]]) {
        let all = [header] + rows
        let widths = header.indices.map { c in all.map { $0.indices.contains(c) ? $0[c].count : 0 }.max() ?? 0 }
        for row in all {
            print(row.enumerated().map { c, cell in
                String(repeating: " ", count: widths[c] - cell.count) + cell
            }.joined(separator: "  "))
        }
    }

    static func printJSON<T: Encodable>(_ value: T) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if let data = try? encoder.encode(value) { print(String(decoding: data, as: UTF8.self)) }
    }
}
