import Foundation
import KVCCore
import KVCVision

/// Image preprocessing as a model directory's `preprocessor_config.json` says (transformers'
/// `Idefics3ImageProcessor` with its PIL backend): RGB; with `do_resize`, the longest edge to `size.longest_edge`
/// keeping the aspect ratio (odd short edges rounded up to even, at most 4096); then either
///
/// - with `do_image_splitting` (`process`): both sides rounded up to multiples of the vision tower's `image_size`,
///   cut into `rows x cols` tiles of that size (row-major), plus the whole image resized to one more tile, the global
///   image (an image that is a single tile is used alone, rows = cols = 0);
/// - without it (`pixels`): the square global image at `image_size`;
///
/// then rescale (`rescale_factor`, 1/255) and normalise (`image_mean`, `image_std`). Resampling is Pillow's, bit for
/// bit (`PILResample`, `resample` 1 = Lanczos as Idefics3 uses, 2 bilinear, 3 bicubic).
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
    public var doImageSplitting: Bool

    /// The defaults of transformers' `Idefics3ImageProcessor` for a tower of `imageSize` (its 364-px defaults scaled:
    /// longest edge 4 tiles, splitting on, Lanczos, rescale 1/255, mean = std = 0.5).
    public static func defaults(imageSize: Int) -> Idefics3ImageProcessor {
        Idefics3ImageProcessor(imageSize: imageSize, doResize: true, longestEdge: 4 * imageSize, resample: .lanczos,
                               doRescale: true, rescaleFactor: 1 / 255, doNormalize: true, mean: [0.5, 0.5, 0.5],
                               std: [0.5, 0.5, 0.5], doImageSplitting: true)
    }

    public init(imageSize: Int, doResize: Bool, longestEdge: Int, resample: PILResample, doRescale: Bool,
                rescaleFactor: Float, doNormalize: Bool, mean: [Float], std: [Float], doImageSplitting: Bool) {
        self.doImageSplitting = doImageSplitting
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
    /// standard error.
    /// - Throws: `KVCError` naming the file and field for a malformed value.
    public static func load(directory: String, imageSize: Int, warn: (String) -> Void = standardErrorWarning) throws
        -> Idefics3ImageProcessor {
        let path = (directory as NSString).appendingPathComponent("preprocessor_config.json")
        var p = defaults(imageSize: imageSize)
        guard FileManager.default.fileExists(atPath: path) else {
            warn("\(path) not found; using Idefics3's default preprocessing (Lanczos resize, longest edge "
                 + "\(4 * imageSize), tiles of \(imageSize)x\(imageSize) and a global image; rescale 1/255, mean 0.5, std 0.5)")
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
        p.doImageSplitting = try f.bool("do_image_splitting", default: true)
        if let maxSize = try f.object("max_image_size"), maxSize.has("longest_edge"),
           try maxSize.int("longest_edge") != imageSize {
            warn("\(path): max_image_size.longest_edge is \(try maxSize.int("longest_edge")); tiles and the global image "
                 + "use the vision tower's image_size \(imageSize)")
        }
        return p
    }

    /// The square global image alone, planar `[3, imageSize, imageSize]` (the processor without splitting).
    public func pixels(_ image: Image) -> [Float] {
        normalized(resample.resize(aspectResized(image), width: imageSize, height: imageSize))
    }

    /// One image as the processor hands it to the vision tower: tiles then the global image, each planar
    /// `[3, imageSize, imageSize]`, and the tile grid (0 x 0 when there are no tiles).
    public struct Processed: Sendable {
        public var images: [[Float]]
        public var rows: Int
        public var cols: Int
    }

    /// Tiles and global image with `do_image_splitting`, else the global image alone (`pixels`).
    public func process(_ image: Image) -> Processed {
        guard doImageSplitting else { return Processed(images: [pixels(image)], rows: 0, cols: 0) }
        let tile = imageSize
        var image = aspectResized(image)
        let (width, height) = Self.tileMultipleSize(width: image.width, height: image.height, tile: tile)
        image = resample.resize(image, width: width, height: height)
        guard width > tile || height > tile else { return Processed(images: [normalized(image)], rows: 0, cols: 0) }
        let rows = height / tile, cols = width / tile
        var images: [[Float]] = []
        for r in 0..<rows {
            for c in 0..<cols { images.append(normalized(image, x: c * tile, y: r * tile, size: tile)) }
        }
        images.append(normalized(resample.resize(image, width: tile, height: tile)))
        return Processed(images: images, rows: rows, cols: cols)
    }

    private func aspectResized(_ image: Image) -> Image {
        guard doResize else { return image }
        let (width, height) = Self.aspectPreservingSize(width: image.width, height: image.height, longestEdge: longestEdge)
        return resample.resize(image, width: width, height: height)
    }

    /// The `size x size` square at (`x`, `y`) of `image` (the whole image by default), rescaled and normalised, planar.
    private func normalized(_ image: Image, x: Int = 0, y: Int = 0, size: Int? = nil) -> [Float] {
        let side = size ?? imageSize
        precondition(x + side <= image.width && y + side <= image.height, "normalized: square outside the image")
        let plane = side * side
        var out = [Float](repeating: 0, count: 3 * plane)
        let scale = doRescale ? rescaleFactor : 1
        for ch in 0..<3 {
            for row in 0..<side {
                for col in 0..<side {
                    var v = Float(image.pixels[((y + row) * image.width + x + col) * image.channels + ch]) * scale
                    if doNormalize { v = (v - mean[ch]) / std[ch] }
                    out[ch * plane + row * side + col] = v
                }
            }
        }
        return out
    }
}

extension Idefics3ImageProcessor {
    /// transformers' `resize_for_vision_encoder`: the longer side rounded up to a multiple of `tile`, the other from
    /// the aspect ratio (truncated), then rounded up to a multiple of `tile` too.
    static func tileMultipleSize(width: Int, height: Int, tile: Int) -> (width: Int, height: Int) {
        func roundUp(_ n: Int) -> Int { max(1, (n + tile - 1) / tile) * tile }
        let aspect = Double(width) / Double(height)
        if width >= height {
            let w = roundUp(width)
            return (w, roundUp(Int(Double(w) / aspect)))
        }
        let h = roundUp(height)
        return (roundUp(Int(Double(h) * aspect)), h)
    }

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
