import Foundation
import KVCCore

/// Seeded mutations of a file's bytes or text: what a bad disk, a cut-off download or a careless edit does.
/// Every mutation keeps the array valid Swift-wise; the file may become anything.
struct Mutator {
    var rng: SeededRandom

    /// Mutants per fuzz test: `KVC_FUZZ_ITERATIONS`, else `default` (sized for a few seconds in CI).
    static func iterations(default value: Int) -> Int {
        ProcessInfo.processInfo.environment["KVC_FUZZ_ITERATIONS"].flatMap(Int.init) ?? value
    }

    /// Numbers at the edges of counts, lengths and offsets, as little-endian words.
    static let boundaryWords: [UInt64] = [0, 1, 2, 7, 8, 255, 256, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                                          1 << 32, 1 << 53, 1 << 62, 0x7FFF_FFFF_FFFF_FFFF, UInt64.max]

    /// One to three mutations; half of the positions fall in the first `hot` bytes (headers).
    mutating func mutate(_ bytes: inout [UInt8], hot: Int) {
        for _ in 0...rng.nextInt(below: 3) { mutateOnce(&bytes, hot: hot) }
    }

    private mutating func position(_ count: Int, hot: Int) -> Int {
        guard count > 0 else { return 0 }
        let limit = rng.nextInt(below: 2) == 0 ? min(hot, count) : count
        return rng.nextInt(below: max(limit, 1))
    }

    private mutating func mutateOnce(_ bytes: inout [UInt8], hot: Int) {
        let at = position(bytes.count, hot: hot)
        switch rng.nextInt(below: 7) {
        case 0, 1:
            if !bytes.isEmpty { bytes[at] ^= UInt8(1 << rng.nextInt(below: 8)) }
        case 2:
            let word = Self.boundaryWords[rng.nextInt(below: Self.boundaryWords.count)]
            let width = [1, 4, 8][rng.nextInt(below: 3)]
            for k in 0..<width where at + k < bytes.count { bytes[at + k] = UInt8(truncatingIfNeeded: word >> (8 * k)) }
        case 3:
            bytes.removeLast(rng.nextInt(below: bytes.count + 1))
        case 4:
            let n = min(rng.nextInt(below: 32) + 1, bytes.count - at)
            if n > 0 { bytes.removeSubrange(at..<(at + n)) }
        case 5:
            // Copy a run of the file elsewhere in it (duplicated keys, repeated structure).
            guard bytes.count > 1 else { return }
            let from = rng.nextInt(below: bytes.count), n = min(rng.nextInt(below: 64) + 1, bytes.count - from)
            bytes.insert(contentsOf: Array(bytes[from..<(from + n)]), at: min(at, bytes.count))
        default:
            bytes.insert(contentsOf: (0..<(rng.nextInt(below: 16) + 1)).map { _ in UInt8(truncatingIfNeeded: rng.next()) },
                         at: min(at, bytes.count))
        }
    }

    /// Tokens that stress a text format's values: wrong types, out-of-range and special numbers, YAML syntax.
    static let hostileTokens = ["-1", "0", "1e309", "-1e309", ".nan", ".inf", "~", "null", "[]", "{}", "[1, 2]", "''",
                                "99999999999999999999999", "0x10", "true", "no", "!!binary AAAA", "&a x", "*a", "|",
                                ">", "- item", "key: value", "\t", ":", "\"unterminated", "'", "#", "%YAML 1.1",
                                String(repeating: "a", count: 5000), "é", "\u{0}"]

    /// Text mutations on whole tokens and lines, plus the byte mutations above.
    mutating func mutateText(_ text: String) -> String {
        var lines = text.components(separatedBy: "\n")
        for _ in 0...rng.nextInt(below: 2) {
            guard !lines.isEmpty else { break }
            let i = rng.nextInt(below: lines.count)
            switch rng.nextInt(below: 6) {
            case 0:   // replace the value of a `key: value` line
                if let colon = lines[i].firstIndex(of: ":") {
                    lines[i] = String(lines[i][...colon]) + " " + Self.hostileTokens[rng.nextInt(below: Self.hostileTokens.count)]
                }
            case 1: lines.remove(at: i)
            case 2: lines.insert(lines[rng.nextInt(below: lines.count)], at: i)   // duplicate key
            case 3: lines[i] = String(repeating: " ", count: rng.nextInt(below: 5)) + lines[i].trimmingCharacters(in: .whitespaces)
            case 4: lines[i] += Self.hostileTokens[rng.nextInt(below: Self.hostileTokens.count)]
            default:
                var bytes = Array(lines[i].utf8)
                mutate(&bytes, hot: bytes.count)
                lines[i] = String(decoding: bytes, as: UTF8.self)
            }
        }
        return lines.joined(separator: "\n")
    }
}
