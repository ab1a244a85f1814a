/// Errors on user input say which file, which field or offset, and what was expected.
public struct KVCError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// An error about a file, with an optional location inside it.
    public static func file(_ path: String, _ what: String, offset: Int? = nil) -> KVCError {
        if let offset { return KVCError("\(path): at byte offset \(offset): \(what)") }
        return KVCError("\(path): \(what)")
    }
}
