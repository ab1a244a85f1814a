import Foundation
import KVCCore

/// Typed reads from one JSON object of a configuration file, with errors that name the file and the field's full
/// path ("config.json: text_config.hidden_size must be an integer"). Absent keys (and JSON null) fall back to the
/// defaults the caller gives, as transformers does for keys its config classes define.
struct JSONFields {
    let path: String
    /// Dotted prefix of this object inside the file ("" at top level, "text_config." inside it).
    let prefix: String
    let object: [String: Any]

    init(path: String, prefix: String = "", object: [String: Any]) {
        self.path = path
        self.prefix = prefix
        self.object = object
    }

    /// Parses `path` as a JSON object.
    static func read(_ path: String) throws -> JSONFields {
        guard let data = FileManager.default.contents(atPath: path) else { throw KVCError.file(path, "cannot read the file") }
        guard let json = try? JSONSerialization.jsonObject(with: data), let object = json as? [String: Any] else {
            throw KVCError.file(path, "is not a JSON object")
        }
        return JSONFields(path: path, object: object)
    }

    func has(_ key: String) -> Bool { object[key] != nil && !(object[key] is NSNull) }

    func error(_ key: String, _ what: String) -> KVCError { KVCError.file(path, "\(prefix)\(key) \(what)") }

    func int(_ key: String, default fallback: Int? = nil) throws -> Int {
        let n = try number(key, default: fallback.map { NSNumber(value: $0) }, kind: "an integer")
        guard Double(n.intValue) == n.doubleValue else { throw error(key, "must be an integer, found \(n)") }
        return n.intValue
    }

    func double(_ key: String, default fallback: Double? = nil) throws -> Double {
        try number(key, default: fallback.map { NSNumber(value: $0) }, kind: "a number").doubleValue
    }

    /// A JSON number (not a boolean), or `fallback` when absent.
    private func number(_ key: String, default fallback: NSNumber?, kind: String) throws -> NSNumber {
        guard has(key) else {
            if let fallback { return fallback }
            throw error(key, "is missing")
        }
        guard let n = object[key] as? NSNumber, !isBoolean(n) else { throw error(key, "must be \(kind), found \(object[key]!)") }
        return n
    }

    func bool(_ key: String, default fallback: Bool) throws -> Bool {
        guard has(key) else { return fallback }
        guard let n = object[key] as? NSNumber, isBoolean(n) else {
            throw error(key, "must be true or false, found \(object[key]!)")
        }
        return n.boolValue
    }

    func string(_ key: String, default fallback: String? = nil) throws -> String {
        guard has(key) else {
            if let fallback { return fallback }
            throw error(key, "is missing")
        }
        guard let s = object[key] as? String else { throw error(key, "must be a string, found \(object[key]!)") }
        return s
    }

    func strings(_ key: String) throws -> [String]? {
        guard has(key) else { return nil }
        guard let list = object[key] as? [Any], let strings = list as? [String] else {
            throw error(key, "must be a list of strings")
        }
        return strings
    }

    func doubles(_ key: String, default fallback: [Double]) throws -> [Double] {
        guard has(key) else { return fallback }
        if let n = object[key] as? NSNumber { return [n.doubleValue] }   // processors accept a scalar for all channels
        guard let list = object[key] as? [Any], let numbers = list as? [NSNumber] else {
            throw error(key, "must be a number or a list of numbers")
        }
        return numbers.map(\.doubleValue)
    }

    /// A nested object, or nil when absent.
    func object(_ key: String) throws -> JSONFields? {
        guard has(key) else { return nil }
        guard let nested = object[key] as? [String: Any] else { throw error(key, "must be an object") }
        return JSONFields(path: path, prefix: prefix + key + ".", object: nested)
    }
}

/// JSON true/false arrive as NSNumber too; their ObjC type code is "c" (char) on Darwin and Linux alike, while
/// JSON numbers are "q"/"i"/"d".
private func isBoolean(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }
