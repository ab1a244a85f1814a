import Foundation
import KVCCore

/// The weights of a Hugging Face model directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (its `weight_map` says which file holds each tensor).
///
/// Every lookup checks what the model expects — presence, shape, a float dtype (F32, F16 or BF16) — and its errors name
/// the file and the tensor, so a bad conversion or a missing download is found at load, not as wrong numbers later.
public final class HFCheckpoint {
    public let directory: String
    /// Tensor name -> the file holding it (only files that exist and parse: a missing shard fails at init).
    private let files: [String: SafetensorsFile]

    /// Dtypes the loaders convert to float32.
    public static let floatDTypes: Set<SafetensorsDType> = [.f32, .f16, .bf16]

    /// Opens `model.safetensors.index.json` when present (all shards are opened and checked now), else
    /// `model.safetensors`.
    /// - Throws: `KVCError` naming the index and the missing shard (and one tensor it should hold), or the file
    ///   that is unreadable, or the directory when it holds neither.
    public init(directory: String) throws {
        self.directory = directory
        let index = (directory as NSString).appendingPathComponent("model.safetensors.index.json")
        let single = (directory as NSString).appendingPathComponent("model.safetensors")
        var files: [String: SafetensorsFile] = [:]
        if FileManager.default.fileExists(atPath: index) {
            let weightMap = try Self.readWeightMap(index)
            var opened: [String: SafetensorsFile] = [:]
            for shard in Set(weightMap.values).sorted() {
                let path = (directory as NSString).appendingPathComponent(shard)
                guard FileManager.default.fileExists(atPath: path) else {
                    let example = weightMap.filter { $0.value == shard }.keys.sorted().first ?? "?"
                    throw KVCError.file(index, "shard '\(shard)' is missing (\(path) not found); it should hold "
                                        + "tensor '\(example)' and \(weightMap.values.filter { $0 == shard }.count - 1) more")
                }
                opened[shard] = try SafetensorsFile(path: path)
            }
            for (name, shard) in weightMap {
                let file = opened[shard]!
                guard file.contains(name) else {
                    throw KVCError.file(file.path, "tensor '\(name)' is listed for this shard in \(index) but the file "
                                        + "does not hold it")
                }
                files[name] = file
            }
        } else if FileManager.default.fileExists(atPath: single) {
            let file = try SafetensorsFile(path: single)
            for name in file.names { files[name] = file }
        } else {
            throw KVCError.file(directory, "no model.safetensors or model.safetensors.index.json in the model directory")
        }
        self.files = files
    }

    private static func readWeightMap(_ path: String) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: path) else { throw KVCError.file(path, "cannot read") }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw KVCError.file(path, "is not a JSON object")
        }
        guard let map = json["weight_map"] as? [String: Any] else {
            throw KVCError.file(path, "field 'weight_map' is missing or not an object")
        }
        var out: [String: String] = [:]
        for (name, value) in map {
            guard let shard = value as? String, !shard.contains("/"), !shard.isEmpty else {
                throw KVCError.file(path, "weight_map.\(name) must be a file name in the model directory")
            }
            out[name] = shard
        }
        return out
    }

    public var tensorNames: [String] { files.keys.sorted() }

    public func contains(_ name: String) -> Bool { files[name] != nil }

    /// The file holding `name` (for error messages and raw access).
    public func file(holding name: String) throws -> SafetensorsFile {
        guard let file = files[name] else {
            throw KVCError.file(directory, "tensor '\(name)' is missing from the checkpoint (model.safetensors or its shards)")
        }
        return file
    }

    /// Checks that `name` exists with exactly `shape` and a float dtype; returns its file and description.
    /// - Throws: `KVCError` naming the file and the tensor.
    public func checkedInfo(_ name: String, shape: [Int]) throws -> (file: SafetensorsFile, info: SafetensorsTensorInfo) {
        guard let file = files[name] else {
            throw KVCError.file(directory, "tensor '\(name)' is missing from the checkpoint (expected shape \(shape))")
        }
        let info = try file.info(name)
        guard info.shape == shape else {
            throw KVCError.file(file.path, "tensor '\(name)' has shape \(info.shape), expected \(shape)")
        }
        guard Self.floatDTypes.contains(info.dtype) else {
            throw KVCError.file(file.path, "tensor '\(name)' has dtype \(info.dtype.rawValue), expected F32, F16 or BF16")
        }
        return (file, info)
    }

    /// The tensor as float32 after the checks of `checkedInfo`.
    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        let (file, _) = try checkedInfo(name, shape: shape)
        return try file.floats(name)
    }
}
