import KVCCore

/// Idefics3's connector: pixel shuffle (space-to-depth) then a bias-free projection to the text model's width.
///
/// Pixel shuffle with factor `s` turns the `side x side` patch grid into a `side/s x side/s` grid of tokens, each the
/// concatenation of an `s x s` block of patch features. Following transformers' `Idefics3Connector.pixel_shuffle`
/// (its view/permute/reshape sequence), output token `(r, c)` (row-major) holds, at feature
/// `sr·(s·E) + sc·E + e`, feature `e` of patch `(r·s + sr, c·s + sc)`.
public struct PixelShuffleConnector {
    public let scaleFactor: Int
    public let visionWidth: Int
    public let textWidth: Int
    private let projection: DenseLinear

    /// Loads `model.connector.modality_projection.proj.weight` `[textWidth, visionWidth·s²]`.
    public init(checkpoint: HFCheckpoint, scaleFactor: Int, visionWidth: Int, textWidth: Int,
                name: String = "model.connector.modality_projection.proj") throws {
        self.scaleFactor = scaleFactor
        self.visionWidth = visionWidth
        self.textWidth = textWidth
        projection = try DenseLinear(checkpoint, name, in: visionWidth * scaleFactor * scaleFactor, out: textWidth, bias: false)
    }

    /// Space-to-depth of `[side·side, E]` patch features (row-major grid) to `[(side/s)², s²·E]`.
    public static func pixelShuffle(_ x: [Float], side: Int, width e: Int, scale s: Int) -> [Float] {
        precondition(x.count == side * side * e && side % s == 0, "pixelShuffle: bad shape")
        let outSide = side / s, tokenWidth = s * s * e
        var out = [Float](repeating: 0, count: x.count)
        for r in 0..<outSide {
            for c in 0..<outSide {
                let token = (r * outSide + c) * tokenWidth
                for sr in 0..<s {
                    for sc in 0..<s {
                        let patch = ((r * s + sr) * side + c * s + sc) * e
                        let dst = token + sr * s * e + sc * e
                        for j in 0..<e { out[dst + j] = x[patch + j] }
                    }
                }
            }
        }
        return out
    }

    /// Image tokens `[(side/s)², textWidth]` from the vision tower's `[side², visionWidth]` output.
    public func project(_ patches: [Float], patchesPerSide side: Int) -> [Float] {
        let shuffled = Self.pixelShuffle(patches, side: side, width: visionWidth, scale: scaleFactor)
        return projection.apply(shuffled, rows: shuffled.count / projection.inFeatures)
    }
}
