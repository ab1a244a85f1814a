import Foundation
import Yams

/// A YAML recipe read strictly: every key must be known, every value of the right type and in range, and each error
/// names the file, the dotted key and what was allowed. Sections are read with typed accessors; call
/// `finish()` on each section after reading it to reject keys nobody asked for.
public final class RecipeSection {
    public let file: String
    public let path: String
    private let values: [String: Any]
    private var read: Set<String> = []

    public init(file: String, path: String = "", values: [String: Any]) {
        self.file = file
        self.path = path
        self.values = values
    }

    /// Parses a recipe file; the top level must be a mapping.
    public static func load(path: String) throws -> RecipeSection {
        guard let data = FileManager.default.contents(atPath: path) else { throw KVCError.file(path, "cannot read the recipe") }
        guard let text = String(data: data, encoding: .utf8) else { throw KVCError.file(path, "the recipe is not UTF-8 text") }
        return try parse(text, file: path)
    }

    /// More YAML nodes than any recipe has; counted with aliases expanded, so an alias bomb is refused before it
    /// is built (Yams would expand it in memory).
    public static let maxNodes = 100_000

    public static func parse(_ text: String, file: String) throws -> RecipeSection {
        let object: Any?
        do {
            var budget = maxNodes
            if let root = try Yams.compose(yaml: text), !fits(root, budget: &budget) {
                throw KVCError.file(file, "more than \(maxNodes) YAML nodes once aliases are expanded; a recipe has a few dozen")
            }
            object = try Yams.load(yaml: text)
        } catch let error as KVCError {
            throw error
        } catch {
            throw KVCError.file(file, "not valid YAML: \(error)")
        }
        guard let map = object as? [String: Any] else { throw KVCError.file(file, "the recipe must be a mapping of keys to values") }
        return RecipeSection(file: file, values: map)
    }

    /// Walks `node` (aliases expanded, as loading would) and returns false as soon as `budget` nodes are used up.
    private static func fits(_ node: Node, budget: inout Int) -> Bool {
        budget -= 1
        guard budget >= 0 else { return false }
        switch node {
        case .scalar, .alias: return true
        case .mapping(let m): return m.allSatisfy { fits($0.key, budget: &budget) && fits($0.value, budget: &budget) }
        case .sequence(let s): return s.allSatisfy { fits($0, budget: &budget) }
        }
    }

    private func name(_ key: String) -> String { path.isEmpty ? key : path + "." + key }
    private func fail(_ key: String, _ what: String) -> KVCError { KVCError.file(file, "\(name(key)): \(what)") }

    public func has(_ key: String) -> Bool { values[key] != nil }

    public func int(_ key: String, default value: Int? = nil, range: ClosedRange<Int>) throws -> Int {
        read.insert(key)
        guard let raw = values[key] else {
            if let value { return value }
            throw fail(key, "required (an integer in \(range.lowerBound)...\(range.upperBound))")
        }
        guard let v = raw as? Int, range.contains(v) else {
            throw fail(key, "expected an integer in \(range.lowerBound)...\(range.upperBound), got '\(raw)'")
        }
        return v
    }

    public func double(_ key: String, default value: Double? = nil, range: ClosedRange<Double>) throws -> Double {
        read.insert(key)
        guard let raw = values[key] else {
            if let value { return value }
            throw fail(key, "required (a number in \(range.lowerBound)...\(range.upperBound))")
        }
        let v: Double? = (raw as? Double) ?? (raw as? Int).map(Double.init)
        guard let v, v.isFinite, range.contains(v) else {
            throw fail(key, "expected a number in \(range.lowerBound)...\(range.upperBound), got '\(raw)'")
        }
        return v
    }

    public func string(_ key: String, default value: String? = nil, allowed: [String]? = nil) throws -> String {
        read.insert(key)
        guard let raw = values[key] else {
            if let value { return value }
            throw fail(key, "required" + (allowed.map { " (one of \($0.joined(separator: ", ")))" } ?? ""))
        }
        guard let v = raw as? String else { throw fail(key, "expected a string, got '\(raw)'") }
        if let allowed, !allowed.contains(v) {
            throw fail(key, "'\(v)' is not one of \(allowed.joined(separator: ", "))")
        }
        return v
    }

    public func bool(_ key: String, default value: Bool) throws -> Bool {
        read.insert(key)
        guard let raw = values[key] else { return value }
        guard let v = raw as? Bool else { throw fail(key, "expected true or false, got '\(raw)'") }
        return v
    }

    /// A nested mapping, or nil when absent.
    public func section(_ key: String) throws -> RecipeSection? {
        read.insert(key)
        guard let raw = values[key] else { return nil }
        guard let map = raw as? [String: Any] else { throw fail(key, "expected a mapping of keys to values") }
        return RecipeSection(file: file, path: name(key), values: map)
    }

    /// Rejects keys that were not read, naming them and the keys this section accepts.
    public func finish() throws {
        let unknown = Set(values.keys).subtracting(read).sorted()
        guard unknown.isEmpty else {
            let where_ = path.isEmpty ? "top level" : path
            throw KVCError.file(file, "unknown key\(unknown.count > 1 ? "s" : "") \(unknown.map { name($0) }.joined(separator: ", ")) "
                                + "(\(where_) accepts: \(read.sorted().joined(separator: ", ")))")
        }
    }
}
