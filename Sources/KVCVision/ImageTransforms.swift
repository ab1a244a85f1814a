import Foundation

/// Per-channel affine map from 8-bit values to the floats the encoder sees: `(v / 255 - mean[c]) / std[c]`.
public struct ImageNormalization: Equatable, Sendable, Codable {
    public var mean: [Float]
    public var std: [Float]

    public init(mean: [Float], std: [Float]) {
        precondition(mean.count == std.count && std.allSatisfy { $0 > 0 }, "ImageNormalization: bad mean/std")
        self.mean = mean
        self.std = std
    }

    /// Maps 0...255 to -1...1 in every channel; the encoder is trained from scratch so no dataset statistics are
    /// baked in.
    public static let symmetric = ImageNormalization(mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5])
}

extension Image {
    /// Bilinear resampling with pixel centres at half-integers (the convention of PyTorch's
    /// `interpolate(mode: "bilinear", align_corners: false)` without antialiasing); samples outside the image clamp
    /// to the edge. Results are rounded to the nearest 8-bit value.
    public func resized(width newWidth: Int, height newHeight: Int) -> Image {
        precondition(newWidth > 0 && newHeight > 0, "Image.resized: bad target size \(newWidth)x\(newHeight)")
        if newWidth == width && newHeight == height { return self }
        let xs = bilinearTaps(source: width, target: newWidth)
        let ys = bilinearTaps(source: height, target: newHeight)
        let c = channels
        var out = [UInt8](repeating: 0, count: newWidth * newHeight * c)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for (oy, ty) in ys.enumerated() {
                    let row0 = ty.lower * width * c, row1 = ty.upper * width * c
                    for (ox, tx) in xs.enumerated() {
                        let o = (oy * newWidth + ox) * c
                        let a0 = tx.lower * c, a1 = tx.upper * c
                        for ch in 0..<c {
                            let top = Float(src[row0 + a0 + ch]) * (1 - tx.weight) + Float(src[row0 + a1 + ch]) * tx.weight
                            let bottom = Float(src[row1 + a0 + ch]) * (1 - tx.weight) + Float(src[row1 + a1 + ch]) * tx.weight
                            let v = top * (1 - ty.weight) + bottom * ty.weight
                            dst[o + ch] = UInt8(min(max(v.rounded(), 0), 255))
                        }
                    }
                }
            }
        }
        return Image(width: newWidth, height: newHeight, channels: c, pixels: out)
    }

    /// Writes the image as planar floats `[channels, height, width]`, normalised, into `destination`
    /// (which must hold `channels * height * width` floats).
    public func writeCHW(into destination: UnsafeMutablePointer<Float>, normalization: ImageNormalization = .symmetric) {
        precondition(normalization.mean.count == channels,
                     "Image.writeCHW: normalisation for \(normalization.mean.count) channels, image has \(channels)")
        let plane = width * height
        pixels.withUnsafeBufferPointer { src in
            for ch in 0..<channels {
                // v/255 - mean over std, folded into one multiply-add per value.
                let scale = 1 / (255 * normalization.std[ch])
                let shift = -normalization.mean[ch] / normalization.std[ch]
                let dst = destination + ch * plane
                for i in 0..<plane { dst[i] = Float(src[i * channels + ch]) * scale + shift }
            }
        }
    }

    /// The image as planar normalised floats `[channels, height, width]`.
    public func floatsCHW(normalization: ImageNormalization = .symmetric) -> [Float] {
        [Float](unsafeUninitializedCapacity: channels * width * height) { buffer, count in
            writeCHW(into: buffer.baseAddress!, normalization: normalization)
            count = channels * width * height
        }
    }
}

/// For each output coordinate: the two source indices it blends and the weight of the upper one.
fileprivate struct BilinearTap {
    var lower: Int
    var upper: Int
    var weight: Float
}

fileprivate func bilinearTaps(source: Int, target: Int) -> [BilinearTap] {
    let scale = Float(source) / Float(target)
    return (0..<target).map { o in
        let s = max((Float(o) + 0.5) * scale - 0.5, 0)
        let lower = min(Int(s), source - 1)
        let upper = min(lower + 1, source - 1)
        return BilinearTap(lower: lower, upper: upper, weight: s - Float(lower))
    }
}
