import KVCCore

/// How text is cut into words before BPE merges, as named by the GGUF key `tokenizer.ggml.pre`.
///
/// Both splits are written by hand over Unicode scalars (no regex engine) and follow llama.cpp's reading
/// of the GPT-2 pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`:
/// contractions are case-sensitive, the optional prefix is a plain space (U+0020) only, and a whitespace run
/// gives its last character to the word after it unless the run ends the piece of text being split.
public enum PreTokenizer: Sendable, Equatable {
    /// The GPT-2 split alone (`gpt2`, `mpt`, `olmo`, `jais`).
    case gpt2
    /// Every number character (`\p{N}`) made a word of its own first, then the GPT-2 split on the text between
    /// them (`smollm`, `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva`). Because the
    /// second split only sees the text between digits, a whitespace run before a digit stays whole:
    /// "year  2026" gives "year", "  ", "2", "0", "2", "6".
    case isolatedDigitsThenGPT2

    /// The pre-tokenizer for a `tokenizer.ggml.pre` value; other names are an error rather than a silent
    /// fallback, since a wrong split gives plausible but different token ids.
    public init(ggufName name: String) throws {
        switch name {
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva":
            self = .isolatedDigitsThenGPT2
        case "gpt2", "mpt", "olmo", "jais":
            self = .gpt2
        default:
            throw KVCError("tokenizer.ggml.pre: unsupported pre-tokenizer \"\(name)\" "
                + "(supported: smollm, starcoder, refact, command-r, codeshell, exaone, minerva, gpt2, mpt, olmo, jais)")
        }
    }

    /// Calls `word` with the byte range of each word of `bytes[range]`, in order; the ranges tile the input.
    /// `bytes` must be valid UTF-8 and `range` must start and end on scalar boundaries.
    func forEachWord(in bytes: UnsafeBufferPointer<UInt8>, range: Range<Int>, _ word: (Range<Int>) -> Void) {
        let scalars = DecodedScalars(bytes: bytes, range: range)
        let count = scalars.count
        guard count > 0 else { return }
        switch self {
        case .gpt2:
            scalars.splitGPT2(from: 0, to: count, word)
        case .isolatedDigitsThenGPT2:
            var runStart = 0
            for i in 0..<count where scalars.classes[i] == .number {
                if runStart < i { scalars.splitGPT2(from: runStart, to: i, word) }
                word(scalars.byteRange(i, i + 1))
                runStart = i + 1
            }
            if runStart < count { scalars.splitGPT2(from: runStart, to: count, word) }
        }
    }
}

/// The character classes the GPT-2 pattern distinguishes.
enum ScalarClass: UInt8 {
    case letter, number, whitespace, other

    /// `\p{L}`, `\p{N}` and `\s` (the Unicode White_Space property, which Oniguruma and llama.cpp both use).
    static func of(_ value: UInt32) -> ScalarClass {
        if value < 0x80 { return asciiClasses[Int(value)] }
        guard let scalar = Unicode.Scalar(value) else { return .other }
        let properties = scalar.properties
        if properties.isWhitespace { return .whitespace }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }

    private static let asciiClasses: [ScalarClass] = (0..<128).map { value -> ScalarClass in
        switch UInt8(value) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): return .letter
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        case 0x09...0x0D, 0x20: return .whitespace
        default: return .other
        }
    }
}

/// The scalars of a stretch of UTF-8 with their classes and byte offsets, so the split can look ahead
/// by scalar and still report byte ranges.
private struct DecodedScalars {
    var values: [UInt32] = []
    var classes: [ScalarClass] = []
    /// Byte offset of each scalar, plus one final entry for the end of the stretch.
    var offsets: [Int] = []

    var count: Int { values.count }

    init(bytes: UnsafeBufferPointer<UInt8>, range: Range<Int>) {
        values.reserveCapacity(range.count)
        classes.reserveCapacity(range.count)
        offsets.reserveCapacity(range.count + 1)
        var i = range.lowerBound
        while i < range.upperBound {
            let lead = bytes[i]
            var value: UInt32
            var length: Int
            // Input comes from a Swift String, so it is valid UTF-8; the guards only keep a bad buffer from
            // reading past the range.
            if lead < 0x80 { value = UInt32(lead); length = 1 }
            else if lead < 0xE0 { value = UInt32(lead & 0x1F); length = 2 }
            else if lead < 0xF0 { value = UInt32(lead & 0x0F); length = 3 }
            else { value = UInt32(lead & 0x07); length = 4 }
            length = min(length, range.upperBound - i)
            for k in 1..<max(length, 1) { value = value << 6 | UInt32(bytes[i + k] & 0x3F) }
            values.append(value)
            classes.append(ScalarClass.of(value))
            offsets.append(i)
            i += length
        }
        offsets.append(range.upperBound)
    }

    func byteRange(_ from: Int, _ to: Int) -> Range<Int> { offsets[from]..<offsets[to] }

    /// The GPT-2 pattern over scalars `start..<end`; nothing outside that window is looked at, as in llama.cpp
    /// where each piece left by the digit split is matched on its own.
    func splitGPT2(from start: Int, to end: Int, _ word: (Range<Int>) -> Void) {
        let space: UInt32 = 0x20, apostrophe: UInt32 = 0x27
        var pos = start
        while pos < end {
            let first = pos
            let value = values[pos]

            // 's 't 'm 'd 're 've 'll
            if value == apostrophe && pos + 1 < end {
                let next = values[pos + 1]
                if next == 0x73 || next == 0x74 || next == 0x6D || next == 0x64 {  // s t m d
                    pos += 2; word(byteRange(first, pos)); continue
                }
                if pos + 2 < end {
                    let pair = (next, values[pos + 2])
                    if pair == (0x72, 0x65) || pair == (0x76, 0x65) || pair == (0x6C, 0x6C) {  // re ve ll
                        pos += 3; word(byteRange(first, pos)); continue
                    }
                }
            }

            // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional leading space, then a run of one class.
            let body = value == space ? pos + 1 : pos
            if body < end {
                let runClass = classes[body]
                if runClass != .whitespace {
                    pos = body + 1
                    while pos < end && classes[pos] == runClass { pos += 1 }
                    word(byteRange(first, pos)); continue
                }
            }

            // "\s+(?!\S)|\s+": a whitespace run leaves its last character to a following word.
            var runEnd = pos
            while runEnd < end && classes[runEnd] == .whitespace { runEnd += 1 }
            if runEnd - pos > 1 && runEnd < end {
                pos = runEnd - 1
            } else if runEnd > pos {
                pos = runEnd
            } else {
                pos += 1  // not reached: every class is covered above
            }
            word(byteRange(first, pos))
        }
    }
}
