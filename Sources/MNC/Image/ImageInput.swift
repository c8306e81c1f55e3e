import CImage

/// An image decoded to 8-bit RGB by the C code in `Sources/CImage`, which generated classifiers
/// compile too, so `mnc run --image` and a generated executable see the same pixels.
///
/// The C file reads JPEG, PNG, BMP and binary PPM/PGM, chosen by the first bytes of the file,
/// and rejects images wider or taller than `RGBImage.maxDimension` before allocating them.
public struct RGBImage: Equatable {
    public static let maxDimension = Int(MNC_IMAGE_MAX_DIMENSION)

    public let width: Int
    public let height: Int
    /// `width * height * 3` bytes: R, G, B for each pixel, rows from the top, no padding.
    public let pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        guard (1...RGBImage.maxDimension).contains(width),
              (1...RGBImage.maxDimension).contains(height),
              pixels.count == width * height * 3
        else {
            throw MNCError("invalid RGB image: \(width)x\(height) pixels need \(width)*\(height)*3 bytes within the \(RGBImage.maxDimension)-pixel limit, got \(pixels.count) bytes")
        }
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// Reads and decodes the image file at `path`. Error messages start with the path.
    public init(contentsOf path: String) throws {
        var image = mnc_image()
        let (status, message) = callWithErrorBuffer { buffer, length in
            mnc_image_load(path, &image, buffer, length)
        }
        guard status == 0 else {
            throw MNCError("\(path): \(message)")
        }
        self.init(taking: &image)
    }

    /// Decodes image bytes. Error messages start with `name`, which names the file.
    public init(data: [UInt8], name: String) throws {
        var image = mnc_image()
        let (status, message) = data.withUnsafeBufferPointer { bytes in
            callWithErrorBuffer { buffer, length in
                mnc_image_decode(bytes.baseAddress, bytes.count, &image, buffer, length)
            }
        }
        guard status == 0 else {
            throw MNCError("\(name): \(message)")
        }
        self.init(taking: &image)
    }

    /// Copies the pixels of a successfully decoded C image and frees it.
    private init(taking image: inout mnc_image) {
        width = Int(image.width)
        height = Int(image.height)
        pixels = Array(UnsafeBufferPointer(start: image.pixels, count: width * height * 3))
        mnc_image_free(&image)
    }

    /// Returns the `3 * height * width` network input that `preprocessing` describes, in its
    /// layout. Errors start with `name`.
    public func preprocessed(height: Int, width: Int, preprocessing: Preprocessing,
                             name: String) throws -> [Float] {
        guard (1...RGBImage.maxDimension).contains(height),
              (1...RGBImage.maxDimension).contains(width)
        else {
            throw MNCError("\(name): invalid preprocessing: input size \(width)x\(height) must be within 1...\(RGBImage.maxDimension) on each side")
        }
        guard preprocessing.mean.count == 3, preprocessing.std.count == 3 else {
            throw MNCError("\(name): invalid preprocessing: mean and std need 3 values each (R, G, B), got \(preprocessing.mean.count) and \(preprocessing.std.count)")
        }
        let mean = preprocessing.mean
        let std = preprocessing.std
        var parameters = mnc_preprocess(
            height: Int32(height),
            width: Int32(width),
            // Out-of-range values saturate and the C code rejects them with a message.
            resize_shorter_side: Int32(clamping: preprocessing.resizeShorterSide ?? 0),
            crop_fraction: preprocessing.cropFraction,
            mean: (mean[0], mean[1], mean[2]),
            std: (std[0], std[1], std[2]),
            layout: preprocessing.layout == .nchw
                ? Int32(MNC_IMAGE_LAYOUT_NCHW) : Int32(MNC_IMAGE_LAYOUT_NHWC)
        )
        var output = [Float](repeating: 0, count: 3 * height * width)
        let (status, message) = pixels.withUnsafeBufferPointer { bytes in
            output.withUnsafeMutableBufferPointer { floats in
                callWithErrorBuffer { buffer, length in
                    // The C code only reads the pixels; its struct field is not const.
                    var image = mnc_image(
                        width: Int32(self.width),
                        height: Int32(self.height),
                        pixels: UnsafeMutablePointer(mutating: bytes.baseAddress)
                    )
                    return mnc_image_preprocess(&image, &parameters, floats.baseAddress, buffer,
                                                length)
                }
            }
        }
        guard status == 0 else {
            throw MNCError("\(name): \(message)")
        }
        return output
    }
}

/// Reads the image file at `path` and returns the float32 network input of `height` x `width`
/// pixels that `preprocessing` describes (crop, Pillow-exact bilinear resize, normalization, layout).
/// Throws `MNCError` with a message that starts with the path.
public func loadPreprocessedImage(path: String, height: Int, width: Int,
                                  preprocessing: Preprocessing) throws -> [Float] {
    let image = try RGBImage(contentsOf: path)
    return try image.preprocessed(height: height, width: width, preprocessing: preprocessing,
                                  name: path)
}

/// Calls a C function that writes a one-line message to `err` on failure, and returns its
/// status with that message.
private func callWithErrorBuffer(
    _ body: (UnsafeMutablePointer<CChar>, Int) -> Int32
) -> (status: Int32, message: String) {
    var buffer = [CChar](repeating: 0, count: 256)
    let status = buffer.withUnsafeMutableBufferPointer { pointer -> Int32 in
        guard let base = pointer.baseAddress else { return -1 }
        return body(base, pointer.count)
    }
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return (status, String(decoding: bytes, as: UTF8.self))
}
