import Foundation

/// A small line chart rendered to a self-contained SVG string: axes with round-number ticks, one polyline with
/// markers per series, a legend. Enough for accuracy-vs-ratio, tokens/s-vs-budget and loss curves, without a
/// plotting dependency.
public struct SVGChart {
    public struct Series {
        public var label: String
        public var points: [(x: Double, y: Double)]
        public var dashed: Bool
        /// A fixed colour (for a reference line); nil takes the next palette colour.
        public var colour: String?
        /// Drawn thicker (the method the report is about).
        public var emphasis: Bool

        public init(label: String, points: [(x: Double, y: Double)], dashed: Bool = false, colour: String? = nil,
                    emphasis: Bool = false) {
            self.label = label
            self.points = points.sorted { $0.x < $1.x }
            self.dashed = dashed
            self.colour = colour
            self.emphasis = emphasis
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var width = 640.0
    public var height = 380.0
    /// Fixed y range (for example 0...1 for accuracy); nil fits the data.
    public var yRange: ClosedRange<Double>?
    public var logX = false

    public init(title: String, xLabel: String, yLabel: String, series: [Series], yRange: ClosedRange<Double>? = nil) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series.filter { !$0.points.isEmpty }
        self.yRange = yRange
    }

    /// Colour-blind-safe palette (Okabe-Ito), cycled.
    static let palette = ["#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442", "#999999",
                          "#8C564B", "#17BECF"]
    /// The emphasised series' colour (not in the palette).
    static let emphasisColour = "#D55E00"

    public func render() -> String {
        let left = 64.0, right = 170.0, top = 36.0, bottom = 52.0
        let plotW = width - left - right, plotH = height - top - bottom
        let xs = series.flatMap { $0.points.map { logX ? log10(max($0.x, 1e-12)) : $0.x } }
        let ys = series.flatMap { $0.points.map(\.y) }
        let xAxis = Self.niceRange(xs.min() ?? 0, xs.max() ?? 1)
        let yAxis = yRange.map { Self.niceRange($0.lowerBound, $0.upperBound) } ?? Self.niceRange(ys.min() ?? 0, ys.max() ?? 1)
        func px(_ x: Double) -> Double {
            let v = logX ? log10(max(x, 1e-12)) : x
            return left + (v - xAxis.lo) / (xAxis.hi - xAxis.lo) * plotW
        }
        func py(_ y: Double) -> Double { top + plotH - (y - yAxis.lo) / (yAxis.hi - yAxis.lo) * plotH }

        var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
        viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(left))" y="20" font-size="14" font-weight="bold">\(escapeXML(title))</text>

        """
        for tick in xAxis.ticks {
            let x = left + (tick - xAxis.lo) / (xAxis.hi - xAxis.lo) * plotW
            let label = logX ? Self.format(pow(10, tick)) : Self.format(tick)
            svg += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH))\" stroke=\"#e5e5e5\"/>\n"
            svg += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 16))\" text-anchor=\"middle\">\(label)</text>\n"
        }
        for tick in yAxis.ticks {
            let y = py(tick)
            svg += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + plotW))\" y2=\"\(f(y))\" stroke=\"#e5e5e5\"/>\n"
            svg += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(Self.format(tick))</text>\n"
        }
        svg += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#333\"/>\n"
        svg += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 12))\" text-anchor=\"middle\">\(escapeXML(xLabel))</text>\n"
        svg += "<text transform=\"translate(16,\(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">\(escapeXML(yLabel))</text>\n"
        var next = 0
        for (i, s) in series.enumerated() {
            let colour: String
            if let fixed = s.colour { colour = fixed } else if s.emphasis { colour = Self.emphasisColour } else {
                colour = Self.palette[next % Self.palette.count]
                next += 1
            }
            let strokeWidth = s.emphasis ? "3" : "2"
            let path = s.points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            let dash = s.dashed ? " stroke-dasharray=\"5,4\"" : ""
            if s.points.count > 1 {
                svg += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"\(strokeWidth)\"\(dash)/>\n"
            }
            if s.points.count <= 40 {
                for p in s.points {
                    svg += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3.5\" fill=\"\(colour)\"/>\n"
                }
            }
            let ly = top + 8 + Double(i) * 18
            svg += "<line x1=\"\(f(left + plotW + 12))\" y1=\"\(f(ly))\" x2=\"\(f(left + plotW + 32))\" y2=\"\(f(ly))\" "
                + "stroke=\"\(colour)\" stroke-width=\"2\"\(dash)/>\n"
            let label = s.label.count > 22 ? s.label.prefix(21) + "…" : s.label
            svg += "<text x=\"\(f(left + plotW + 38))\" y=\"\(f(ly + 4))\"><title>\(escapeXML(s.label))</title>"
                + "\(escapeXML(label))</text>\n"
        }
        svg += "</svg>\n"
        return svg
    }

    /// An axis range widened to round numbers, with its ticks (1, 2 or 5 times a power of ten apart).
    static func niceRange(_ lo: Double, _ hi: Double) -> (lo: Double, hi: Double, ticks: [Double]) {
        var lo = lo, hi = hi
        if hi - lo < 1e-12 { lo -= 0.5; hi += 0.5 }
        let rough = (hi - lo) / 5
        let magnitude = pow(10, floor(log10(rough)))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rough } ?? 10 * magnitude
        let first = floor(lo / step) * step, last = ceil(hi / step) * step
        let ticks = stride(from: first, through: last + step / 2, by: step).map { ($0 / step).rounded() * step }
        return (first, last, ticks)
    }

    static func format(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e6 { return String(Int(v)) }
        return String(format: abs(v) < 0.01 ? "%.3g" : "%.2f", v).replacingOccurrences(of: #"(\.\d*?)0+$"#, with: "$1",
                                                                                     options: .regularExpression)
    }

    private func f(_ v: Double) -> String { String(format: "%.1f", v) }
}

/// Escapes text for XML/HTML element content and attribute values.
public func escapeXML(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.count)
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        default: out.append(c)
        }
    }
    return out
}
