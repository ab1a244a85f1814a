import Foundation
import KVCBackbone
import KVCCollect
import KVCCore

/// A fresh temporary directory holding `writeSyntheticCaches` output (the caller removes it).
func syntheticCacheDirectory(_ name: String, samples: Int, layout: CacheLayout, rope: RotaryEmbedding) throws -> String {
    let dir = NSTemporaryDirectory() + "kvc-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try writeSyntheticCaches(to: dir, samples: samples, layout: layout, rope: rope)
    return dir
}

/// Caches of a tiny backbone whose de-rotated keys vary smoothly over an 8x8 grid (like image tokens), plus noise.
func writeSyntheticCaches(to dir: String, samples: Int, layout: CacheLayout, rope: RotaryEmbedding) throws {
    var rng = SeededRandom(seed: 21)
    let d = layout.headDim, n = 64
    var list: [CacheSample] = []
    for s in 0..<samples {
        let positions = (0..<n).map { Int32(6 + $0) }
        var keys = [Float](repeating: 0, count: layout.layers * layout.kvHeads * n * d)
        for lh in 0..<(layout.layers * layout.kvHeads) {
            let a = (0..<d).map { _ in rng.nextNormal() }, b = (0..<d).map { _ in rng.nextNormal() }
            for t in 0..<n {
                let r = Float(t / 8) / 7, c = Float(t % 8) / 7
                let k = (0..<d).map { a[$0] * r + b[$0] * c + 0.05 * rng.nextNormal() }
                let rotated = rope.rotate(k, position: Int(positions[t]))
                for e in 0..<d { keys[(lh * n + t) * d + e] = rotated[e] }
            }
        }
        let values = (0..<keys.count).map { _ in rng.nextNormal() }
        let queries = (0..<(layout.layers * layout.queryHeads * 2 * d)).map { _ in rng.nextNormal() }
        list.append(CacheSample(id: "s\(s)", grids: [ImageGrid(start: 0, rows: 8, cols: 8)], visionPositions: positions,
                                textPositions: [70, 71], keys: HalfConversion.floatToHalf(keys),
                                values: HalfConversion.floatToHalf(values), queries: HalfConversion.floatToHalf(queries)))
    }
    try CacheShard.write(list, skipped: [], fingerprint: "fp", layout: layout, shardIndex: 0,
                         to: dir + "/" + CacheShard.fileName(index: 0))
    try CacheManifest.build(directory: dir, source: [:]).write(directory: dir)
}
