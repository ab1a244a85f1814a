import Foundation
import KVCCore
import KVCVision

/// Image preprocessing as a model directory's `preprocessor_config.json` says (`Idefics3ImageProcessor`), for a
/// single global image (no splitting into tiles): convert to RGB, resize to the vision tower's square input,
/// rescale (`rescale_factor`, 1/255), normalise (`image_mean`, `image_std`).
///
/// Resizing differs from transformers' in one respect, stated plainly: transformers resamples with PIL's Lanczos
/// filter (`resample: 1`), this uses bilinear (`Image.resized`). Images already at the input size — what the parity
/// fixture uses — are not resampled at all, so their pixels agree exactly.
public struct Idefics3ImageProcessor: Equatable, Sendable {
    /// Side of the square the image is resized to (the vision tower's `image_size`).
    public var imageSize: Int
    public var doResize: Bool
    public var doRescale: Bool
    public var rescaleFactor: Float
    public var doNormalize: Bool
    public var mean: [Float]
    public var std: [Float]

    /// The defaults of transformers' `Idefics3ImageProcessor` (mean = std = 0.5, rescale 1/255) at `imageSize`.
    public static func defaults(imageSize: Int) -> Idefics3ImageProcessor {
        Idefics3ImageProcessor(imageSize: imageSize, doResize: true, doRescale: true, rescaleFactor: 1 / 255,
                               doNormalize: true, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5])
    }

    public init(imageSize: Int, doResize: Bool, doRescale: Bool, rescaleFactor: Float, doNormalize: Bool,
                mean: [Float], std: [Float]) {
        self.imageSize = imageSize
        self.doResize = doResize
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
            warn("\(path) not found; using Idefics3's default preprocessing (resize to \(imageSize)x\(imageSize), "
                 + "rescale 1/255, mean 0.5, std 0.5)")
            return p
        }
        let f = try JSONFields.read(path)
        p.doResize = try f.bool("do_resize", default: true)
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
    /// - Throws: `KVCError` when resizing is off and the image is not already the input size.
    public func pixels(_ image: Image, name: String = "image") throws -> [Float] {
        var image = image
        if image.width != imageSize || image.height != imageSize {
            guard doResize else {
                throw KVCError.file(name, "image is \(image.width)x\(image.height) but do_resize is false and the vision "
                                    + "tower takes \(imageSize)x\(imageSize)")
            }
            image = image.resized(width: imageSize, height: imageSize)
        }
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

/// Writes "warning: ..." on standard error (the default for load-time warnings).
public func standardErrorWarning(_ message: String) {
    FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
}
