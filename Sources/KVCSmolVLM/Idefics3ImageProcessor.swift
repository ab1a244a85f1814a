import Foundation
import KVCCore
import KVCVision

/// Image preprocessing as a model directory's `preprocessor_config.json` says (transformers'
/// `Idefics3ImageProcessor` with its PIL backend), for a single global image (no splitting into tiles):
/// RGB; with `do_resize`, the longest edge to `size.longest_edge` keeping the aspect ratio (odd short edges rounded
/// up to even, at most 4096); then the square global image at the vision tower's `image_size`; rescale
/// (`rescale_factor`, 1/255) and normalise (`image_mean`, `image_std`). Resampling is Pillow's, bit for bit
/// (`PILResample`, `resample` 1 = Lanczos as Idefics3 uses, 2 bilinear, 3 bicubic).
public struct Idefics3ImageProcessor: Equatable, Sendable {
    /// Side of the square the image is resized to (the vision tower's `image_size`).
    public var imageSize: Int
    public var doResize: Bool
    /// `size.longest_edge`: the first, aspect-preserving resize.
    public var longestEdge: Int
    public var resample: PILResample
    public var doRescale: Bool
    public var rescaleFactor: Float
    public var doNormalize: Bool
    public var mean: [Float]
    public var std: [Float]

    /// The defaults of transformers' `Idefics3ImageProcessor` (mean = std = 0.5, rescale 1/255) at `imageSize`.
    public static func defaults(imageSize: Int) -> Idefics3ImageProcessor {
        Idefics3ImageProcessor(imageSize: imageSize, doResize: true, longestEdge: 4 * 364, resample: .lanczos,
                               doRescale: true, rescaleFactor: 1 / 255, doNormalize: true, mean: [0.5, 0.5, 0.5],
                               std: [0.5, 0.5, 0.5])
    }

    public init(imageSize: Int, doResize: Bool, longestEdge: Int, resample: PILResample, doRescale: Bool,
                rescaleFactor: Float, doNormalize: Bool, mean: [Float], std: [Float]) {
        self.imageSize = imageSize
        self.doResize = doResize
        self.longestEdge = longestEdge
        self.resample = resample
        self.doRescale = doRescale
        self.rescaleFactor = rescaleFactor
        self.doNormalize = doNormalize
        self.mean = mean
        self.std = std
    }

    /// Reads `preprocessor_config.json` in `directory`; without one, the architecture's defaults, with a warning on
    /// standard error. Tiling (`do_image_splitting: true`) is ignored with a warning: one global image is used.
    /// - Throws: `KVCError` naming the file and field for a malformed value.
    public static func load(directory: String, imageSize: Int, warn: (String) -> Void = standardErrorWarning) throws
        -> Idefics3ImageProcessor {
        let path = (directory as NSString).appendingPathComponent("preprocessor_config.json")
        var p = defaults(imageSize: imageSize)
        guard FileManager.default.fileExists(atPath: path) else {
            warn("\(path) not found; using Idefics3's default preprocessing (Lanczos resize, longest edge 1456, then "
                 + "\(imageSize)x\(imageSize); rescale 1/255, mean 0.5, std 0.5)")
            return p
        }
        let f = try JSONFields.read(path)
        p.doResize = try f.bool("do_resize", default: true)
        if let size = try f.object("size") {
            guard size.has("longest_edge") else { throw size.error("longest_edge", "is missing (Idefics3 sizes by longest edge)") }
            p.longestEdge = try size.int("longest_edge")
            guard (1...4096).contains(p.longestEdge) else { throw size.error("longest_edge", "must be 1...4096") }
        }
        let resample = try f.int("resample", default: 1)
        guard let filter = PILResample(rawValue: resample) else {
            throw f.error("resample", "is \(resample); supported: 1 (Lanczos), 2 (bilinear), 3 (bicubic)")
        }
        p.resample = filter
        p.doRescale = try f.bool("do_rescale", default: true)
        p.rescaleFactor = Float(try f.double("rescale_factor", default: 1.0 / 255))
        p.doNormalize = try f.bool("do_normalize", default: true)
        p.mean = try f.doubles("image_mean", default: [0.5]).map(Float.init)
        p.std = try f.doubles("image_std", default: [0.5]).map(Float.init)
        if p.mean.count == 1 { p.mean = Array(repeating: p.mean[0], count: 3) }
        if p.std.count == 1 { p.std = Array(repeating: p.std[0], count: 3) }
        guard p.mean.count == 3 else { throw f.error("image_mean", "must have 1 or 3 values, found \(p.mean.count)") }
        guard p.std.count == 3, p.std.allSatisfy({ $0 > 0 }) else {
            throw f.error("image_std", "must have 1 or 3 positive values")
        }
        if try f.bool("do_image_splitting", default: true) {
            warn("\(path): do_image_splitting is true; this port encodes one global image (no tiles)")
        }
        if let maxSize = try f.object("max_image_size"), maxSize.has("longest_edge"),
           try maxSize.int("longest_edge") != imageSize {
            warn("\(path): max_image_size.longest_edge is \(try maxSize.int("longest_edge")); the global image is "
                 + "resized to the vision tower's image_size \(imageSize)")
        }
        return p
    }

    /// Planar `[3, imageSize, imageSize]` floats for the vision tower.
    public func pixels(_ image: Image) -> [Float] {
        var image = image
        if doResize {
            let (width, height) = Self.aspectPreservingSize(width: image.width, height: image.height, longestEdge: longestEdge)
            image = resample.resize(image, width: width, height: height)
        }
        image = resample.resize(image, width: imageSize, height: imageSize)
        let plane = imageSize * imageSize
        var out = [Float](repeating: 0, count: 3 * plane)
        for ch in 0..<3 {
            let scale = doRescale ? rescaleFactor : 1
            for i in 0..<plane {
                var v = Float(image.pixels[i * image.channels + ch]) * scale
                if doNormalize { v = (v - mean[ch]) / std[ch] }
                out[ch * plane + i] = v
            }
        }
        return out
    }
}

extension Idefics3ImageProcessor {
    /// transformers' `get_resize_output_image_size` for Idefics3: the longest edge becomes `longestEdge`, the other
    /// follows the aspect ratio (truncated, then rounded up to even), and both are capped at 4096.
    static func aspectPreservingSize(width: Int, height: Int, longestEdge: Int) -> (width: Int, height: Int) {
        let aspect = Double(width) / Double(height)
        var w: Int, h: Int
        if width >= height {
            w = longestEdge
            h = Int(Double(w) / aspect)
            if h % 2 != 0 { h += 1 }
        } else {
            h = longestEdge
            w = Int(Double(h) * aspect)
            if w % 2 != 0 { w += 1 }
        }
        (w, h) = (max(w, 1), max(h, 1))
        let cap = 4096, capAspect = Double(w) / Double(h)
        if w >= h && w > cap {
            w = cap
            h = Int(Double(w) / capAspect)
        } else if h > w && h > cap {
            h = cap
            w = Int(Double(h) * capAspect)
        }
        return (max(w, 1), max(h, 1))
    }
}

/// Writes "warning: ..." on standard error (the default for load-time warnings).
public func standardErrorWarning(_ message: String) {
    FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
}
