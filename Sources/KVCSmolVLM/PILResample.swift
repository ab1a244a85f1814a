import Foundation
import KVCVision

/// Pillow's `Image.resize` for 8-bit RGB images, reproduced bit for bit, so a Hugging Face image processor's pixels
/// (`resample: 1` LANCZOS for Idefics3) come out identical here.
///
/// Pillow (`libImaging/Resample.c`) resamples separably, horizontal pass first, each pass rounding to 8 bits. Per
/// output pixel it takes the source pixels within `support · max(scale, 1)` of the centre `(x + 0.5) · scale`,
/// weights them by the filter at `(i - centre + 0.5) / max(scale, 1)`, normalises the weights to sum 1, and converts
/// them to 22-bit fixed point; the sum starts at one half (rounding) and is clipped to 0...255.
public enum PILResample: Int, Sendable, Equatable {
    case lanczos = 1, bilinear = 2, bicubic = 3

    var support: Double {
        switch self {
        case .bilinear: return 1
        case .bicubic: return 2
        case .lanczos: return 3
        }
    }

    func weight(_ x: Double) -> Double {
        switch self {
        case .bilinear:
            let a = abs(x)
            return a < 1 ? 1 - a : 0
        case .bicubic:
            let a = abs(x), c = -0.5
            if a < 1 { return ((c + 2) * a - (c + 3)) * a * a + 1 }
            if a < 2 { return (((a - 5) * a + 8) * a - 4) * c }
            return 0
        case .lanczos:
            guard -3 <= x && x < 3 else { return 0 }
            return sinc(x) * sinc(x / 3)
        }
    }

    private func sinc(_ x: Double) -> Double {
        if x == 0 { return 1 }
        let px = x * Double.pi
        return sin(px) / px
    }

    static let precisionBits = 32 - 8 - 2

    /// Per output index: first source index and fixed-point weights.
    private func coefficients(inSize: Int, outSize: Int) -> [(first: Int, weights: [Int32])] {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1)
        let reach = support * filterScale
        return (0..<outSize).map { xx in
            let center = (Double(xx) + 0.5) * scale
            let first = max(Int(center - reach + 0.5), 0)   // C's (int) truncation; clamped like Pillow
            let last = min(Int(center + reach + 0.5), inSize)
            var w = (first..<max(first, last)).map { weight((Double($0) - center + 0.5) / filterScale) }
            let total = w.reduce(0, +)
            if total != 0 { w = w.map { $0 / total } }
            let one = Double(1 << Self.precisionBits)
            return (first, w.map { Int32($0 < 0 ? -0.5 + $0 * one : 0.5 + $0 * one) })
        }
    }

    /// The image resized to `width x height` (channel-interleaved 8-bit, any channel count).
    public func resize(_ image: Image, width: Int, height: Int) -> Image {
        var out = image
        if width != image.width { out = pass(out, horizontal: true, size: width) }
        if height != image.height { out = pass(out, horizontal: false, size: height) }
        return out
    }

    private func pass(_ image: Image, horizontal: Bool, size: Int) -> Image {
        let c = image.channels
        let inSize = horizontal ? image.width : image.height
        let outW = horizontal ? size : image.width, outH = horizontal ? image.height : size
        let coefficients = coefficients(inSize: inSize, outSize: size)
        var pixels = [UInt8](repeating: 0, count: outW * outH * c)
        let half = Int32(1 << (Self.precisionBits - 1))
        image.pixels.withUnsafeBufferPointer { src in
            for y in 0..<outH {
                for x in 0..<outW {
                    let (first, weights) = coefficients[horizontal ? x : y]
                    for ch in 0..<c {
                        var sum = half
                        for (k, w) in weights.enumerated() {
                            let sx = horizontal ? first + k : x, sy = horizontal ? y : first + k
                            sum &+= Int32(src[(sy * image.width + sx) * c + ch]) &* w
                        }
                        pixels[(y * outW + x) * c + ch] = UInt8(clamping: sum >> Self.precisionBits)
                    }
                }
            }
        }
        return Image(width: outW, height: outH, channels: c, pixels: pixels)
    }
}
