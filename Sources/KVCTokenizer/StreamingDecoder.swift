/// Turns a stream of token ids into text as it arrives, holding back the bytes of a character that a
/// token boundary has split (an emoji or CJK character often spans two or more byte-level tokens).
public struct StreamingDecoder {
    private let tokenizer: BPETokenizer
    private var pending: [UInt8] = []

    public init(tokenizer: BPETokenizer) { self.tokenizer = tokenizer }

    /// The text that `id` completes (may be empty while a character is still incomplete).
    public mutating func push(_ id: Int) -> String { push(bytes: tokenizer.decodeBytes([id])) }

    /// The text that these bytes complete.
    public mutating func push(bytes: [UInt8]) -> String {
        pending.append(contentsOf: bytes)
        let complete = Self.completePrefixLength(pending)
        guard complete > 0 else { return "" }
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Whatever is still held back, decoded as is (an unfinished character becomes U+FFFD).
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// The length of `bytes` without a trailing, possibly unfinished, multi-byte sequence. Malformed bytes
    /// are not held back: they can never complete, and decode to U+FFFD.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let count = bytes.count
        // The start of the last sequence is at most 3 bytes back from the end.
        var start = count - 1
        while start >= 0 && start > count - 4 && bytes[start] & 0xC0 == 0x80 { start -= 1 }
        guard start >= 0 else { return count }
        let lead = bytes[start]
        let needed: Int
        switch lead {
        case 0xC2...0xDF: needed = 2
        case 0xE0...0xEF: needed = 3
        case 0xF0...0xF4: needed = 4
        default: return count  // ASCII, or a byte that cannot start a sequence
        }
        return count - start < needed ? start : count
    }
}
