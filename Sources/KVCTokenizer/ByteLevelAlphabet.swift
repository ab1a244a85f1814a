/// GPT-2's reversible byte <-> character mapping used by byte-level BPE vocabularies.
///
/// Every byte gets a printable character so vocabulary entries are ordinary strings: the printable
/// Latin-1 bytes stand for themselves and the 68 others (controls, space, ...) are moved to U+0100 and
/// up, in byte order. So the space byte is written "Ġ" (U+0120) and newline "Ċ" (U+010A) in the vocabulary.
enum ByteLevelAlphabet {
    /// The character that stands for each byte.
    static let scalarForByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var nextShifted: UInt32 = 256
        for byte in 0..<256 {
            if isSelfRepresenting(UInt8(byte)) {
                table[byte] = Unicode.Scalar(UInt8(byte))
            } else {
                table[byte] = Unicode.Scalar(nextShifted)!
                nextShifted += 1
            }
        }
        return table
    }()

    /// The inverse mapping: character value -> byte (characters above U+0143 never occur).
    static let byteForScalar: [UInt32: UInt8] = {
        var map = [UInt32: UInt8]()
        for (byte, scalar) in scalarForByte.enumerated() { map[scalar.value] = UInt8(byte) }
        return map
    }()

    /// The bytes that GPT-2 leaves as themselves: '!'...'~', '¡'...'¬', '®'...'ÿ'.
    private static func isSelfRepresenting(_ byte: UInt8) -> Bool {
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
    }

    /// The vocabulary spelling of raw bytes.
    static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var view = String.UnicodeScalarView()
        for byte in bytes { view.append(scalarForByte[Int(byte)]) }
        return String(view)
    }

    /// The raw bytes of a vocabulary spelling, or nil if it uses a character outside the byte alphabet
    /// (then the entry is not a byte-level token, e.g. some added tokens).
    static func decode(_ text: String) -> [UInt8]? {
        var bytes = [UInt8]()
        bytes.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            guard let byte = byteForScalar[scalar.value] else { return nil }
            bytes.append(byte)
        }
        return bytes
    }
}
