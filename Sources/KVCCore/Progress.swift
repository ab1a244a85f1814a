import Foundation

/// One-line progress for long work: count, rate and ETA, written to stderr at most a few times per second.
public final class Progress {
    private let label: String
    private let total: Int
    private let unit: String
    private let start = Date()
    private var lastPrint = Date.distantPast
    private let enabled: Bool
    public private(set) var done = 0

    public init(_ label: String, total: Int, unit: String = "items", enabled: Bool = true) {
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = enabled
    }

    /// Advance by `n` and optionally attach a short status (for example the current loss).
    public func advance(by n: Int = 1, status: String = "") {
        done += n
        let now = Date()
        if enabled && (now.timeIntervalSince(lastPrint) > 0.5 || done >= total) {
            lastPrint = now
            FileHandle.standardError.write(Data(("\r" + line(now: now, status: status) + "\u{1B}[K").utf8))
            if done >= total { FileHandle.standardError.write(Data("\n".utf8)) }
        }
    }

    public func line(now: Date = Date(), status: String = "") -> String {
        let elapsed = max(now.timeIntervalSince(start), 1e-9)
        let rate = Double(done) / elapsed
        let eta = rate > 0 ? Double(max(total - done, 0)) / rate : .infinity
        var s = "\(label): \(done)/\(total) \(unit), \(String(format: "%.2f", rate)) \(unit)/s, "
        s += "elapsed \(Progress.clock(elapsed)), ETA \(Progress.clock(eta))"
        if !status.isEmpty { s += ", " + status }
        return s
    }

    public static func clock(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "--:--" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
                         : String(format: "%02d:%02d", s / 60, s % 60)
    }
}
