/// A token matched as a whole unit in the input text (control and user-defined tokens).
struct SpecialToken {
    let id: Int
    let bytes: [UInt8]
    /// User-defined tokens are matched even when the caller does not parse special tokens (llama.cpp's rule).
    let matchedWithoutParseSpecial: Bool

    /// A stretch of the input: plain text to pre-tokenize, or a special token.
    enum Piece: Equatable {
        case text(Range<Int>)
        case special(Int)
    }

    /// Cuts the special tokens out of `bytes`, taking them in the given order (longest first) and each over
    /// the text that earlier ones left, leftmost occurrence first, as llama.cpp does.
    static func partition(_ bytes: UnsafeBufferPointer<UInt8>, _ specials: [SpecialToken],
                          parseSpecial: Bool) -> [Piece] {
        guard !bytes.isEmpty else { return [] }
        var pieces: [Piece] = [.text(0..<bytes.count)]
        for special in specials where parseSpecial || special.matchedWithoutParseSpecial {
            let pattern = special.bytes
            let first = pattern[0], length = pattern.count
            var split: [Piece] = []
            split.reserveCapacity(pieces.count)
            for piece in pieces {
                guard case .text(let range) = piece, range.count >= length else { split.append(piece); continue }
                var textStart = range.lowerBound
                var i = range.lowerBound
                while i + length <= range.upperBound {
                    if bytes[i] == first && matches(pattern, bytes, at: i) {
                        if textStart < i { split.append(.text(textStart..<i)) }
                        split.append(.special(special.id))
                        i += length
                        textStart = i
                    } else {
                        i += 1
                    }
                }
                if textStart < range.upperBound { split.append(.text(textStart..<range.upperBound)) }
            }
            pieces = split
        }
        return pieces
    }

    private static func matches(_ pattern: [UInt8], _ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> Bool {
        for k in 1..<pattern.count where bytes[start + k] != pattern[k] { return false }
        return true
    }
}
