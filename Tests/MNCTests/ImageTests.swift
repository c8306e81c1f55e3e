import Foundation
import XCTest
@testable import MNC

/// Tests of the C image code through its Swift wrapper. Hand-built files are decoded and checked
/// byte for byte against the formats' specifications. Resizing is checked against values worked
/// out by hand from Pillow's triangle filter, and every rejected input against its message.
/// When `../shared/data` exists, the real models' preprocessed reference inputs are compared too.
final class ImageTests: XCTestCase {

    // MARK: - Paths and byte helpers

    private static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private static var sharedData: URL {
        packageRoot.deletingLastPathComponent().appendingPathComponent("shared/data")
    }

    private func decode(_ bytes: [UInt8], file: StaticString = #filePath,
                        line: UInt = #line) -> RGBImage? {
        do {
            return try RGBImage(data: bytes, name: "test image")
        } catch {
            XCTFail("decoding failed: \(error)", file: file, line: line)
            return nil
        }
    }

    /// Asserts that decoding fails with a message containing `expected`.
    private func assertRejected(_ bytes: [UInt8], _ expected: String, file: StaticString = #filePath,
                                line: UInt = #line) {
        XCTAssertThrowsError(try RGBImage(data: bytes, name: "bad.img"), file: file, line: line) {
            let message = ($0 as? MNCError)?.message ?? "\($0)"
            XCTAssertTrue(message.hasPrefix("bad.img: "),
                          "message \"\(message)\" does not start with the name", file: file,
                          line: line)
            XCTAssertTrue(message.contains(expected),
                          "message \"\(message)\" lacks \"\(expected)\"", file: file, line: line)
        }
    }

    private func temporaryFile(_ bytes: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("mnc-image-test-\(UUID().uuidString)").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    private static func hexBytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.utf8)
        return stride(from: 0, to: digits.count - 1, by: 2).map { index in
            UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16) ?? 0
        }
    }

    private static func le16(_ value: Int) -> [UInt8] {
        [UInt8(value & 0xFF), UInt8((value >> 8) & 0xFF)]
    }

    private static func le32(_ value: Int) -> [UInt8] {
        (0..<4).map { UInt8((value >> (8 * $0)) & 0xFF) }
    }

    private static func be32(_ value: Int) -> [UInt8] {
        (0..<4).reversed().map { UInt8((value >> (8 * $0)) & 0xFF) }
    }

    // MARK: - File builders

    /// Builds a BMP with a 40-byte BITMAPINFOHEADER. `storedRows` are in file order (bottom row
    /// first unless `height` is negative) without padding, which the builder adds.
    private static func bmp(width: Int, height: Int, bitsPerPixel: Int, compression: Int = 0,
                            masks: [Int] = [], palette: [UInt8] = [], storedRows: [[UInt8]],
                            planes: Int = 1) -> [UInt8] {
        let stride = (width * bitsPerPixel + 31) / 32 * 4
        let pixelData = storedRows.flatMap { $0 + [UInt8](repeating: 0, count: stride - $0.count) }
        let offset = 14 + 40 + masks.count * 4 + palette.count
        var bytes: [UInt8] = Array("BM".utf8) + le32(offset + pixelData.count) + le32(0)
            + le32(offset)
        bytes += le32(40) + le32(width) + le32(height) + le16(planes) + le16(bitsPerPixel)
        bytes += le32(compression) + le32(pixelData.count) + le32(2835) + le32(2835)
        bytes += le32(palette.count / 4) + le32(0)
        bytes += masks.flatMap { le32($0) } + palette + pixelData
        return bytes
    }

    private static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 {
                crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
            }
        }
        return ~crc
    }

    private static func pngChunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typeAndData = Array(type.utf8) + data
        return be32(data.count) + typeAndData + be32(Int(crc32(typeAndData)))
    }

    /// Builds a PNG, following the PNG and zlib specifications, whose image data is a zlib
    /// stream of stored (uncompressed) deflate blocks. `rows` are scanlines without filter byte.
    private static func png(width: Int, height: Int, bitDepth: Int, colorType: Int,
                            rows: [[UInt8]], palette: [UInt8] = []) -> [UInt8] {
        let raw: [UInt8] = rows.flatMap { row -> [UInt8] in [0] + row } // filter type 0 (None)
        var zlib: [UInt8] = [0x78, 0x01]
        var start = 0
        repeat {
            let end = min(start + 65535, raw.count)
            let length = end - start
            let finalBlock: UInt8 = end == raw.count ? 1 : 0 // BFINAL bit, BTYPE 00 (stored)
            zlib += [finalBlock] + le16(length) + le16(length ^ 0xFFFF)
            zlib += raw[start..<end]
            start = end
        } while start < raw.count
        var a: UInt32 = 1
        var b: UInt32 = 0
        for byte in raw {
            a = (a + UInt32(byte)) % 65521
            b = (b + a) % 65521
        }
        zlib += be32(Int(b << 16 | a))
        let header = be32(width) + be32(height) + [UInt8(bitDepth), UInt8(colorType), 0, 0, 0]
        var bytes: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        bytes += pngChunk("IHDR", header)
        if !palette.isEmpty {
            bytes += pngChunk("PLTE", palette)
        }
        bytes += pngChunk("IDAT", zlib) + pngChunk("IEND", [])
        return bytes
    }

    /// 16x8 baseline JPEG (no chroma subsampling, quality 100) of the colour (200, 100, 50),
    /// written by libjpeg-turbo 2.1.5's encoder.
    private static let solidJPEG = hexBytes("""
        ffd8ffdb00430001010101010101010101010101010101010101010101010101010101010101010101010101\
        010101010101010101010101010101010101010101010101010101ffdb004301010101010101010101010101\
        0101010101010101010101010101010101010101010101010101010101010101010101010101010101010101\
        0101010101010101ffc00011080008001003011100021101031101ffc4001500010100000000000000000000\
        000000000006ffc40014100100000000000000000000000000000000ffc40015010101000000000000000000\
        00000000000009ffc40014110100000000000000000000000000000000ffda000c03010002110311003f009f\
        4af5b001ffd9
        """)

    /// 8x8 greyscale JPEG of the value 77, quality 100, same encoder.
    private static let greyJPEG = hexBytes("""
        ffd8ffdb00430001010101010101010101010101010101010101010101010101010101010101010101010101\
        010101010101010101010101010101010101010101010101010101ffc0000b080008000801011100ffc40014\
        000100000000000000000000000000000009ffc40014100100000000000000000000000000000000ffda0008\
        010100003f0019dfffd9
        """)

    /// 8x8 CMYK JPEG with an Adobe APP14 segment, samples stored as (255, 128, 0, 200), same
    /// encoder. Adobe CMYK is inverted (255 means no ink), so the expected RGB is
    /// stored C * stored K / 255 per channel: (200, 100, 0).
    private static let cmykJPEG = hexBytes("""
        ffd8ffee000e41646f626500640000000000ffdb004300010101010101010101010101010101010101010101\
        01010101010101010101010101010101010101010101010101010101010101010101010101010101010101ff\
        c000140800080008044311004d11005911004b1100ffc4001600010101000000000000000000000000000a00\
        0bffc40014100100000000000000000000000000000000ffda000e0443004d0059004b00003f007f099ff920\
        3fffd9
        """)

    // MARK: - Reference data

    /// Compares against the inputs that Pillow produced for the real models: RGB, centre crop to
    /// the shorter side, Image.resize(BILINEAR), x / 127.5 - 1, NHWC. The 8-bit pixels match
    /// Pillow's exactly, so the only difference is float32 rounding of the normalization:
    /// (x - 127.5) / 127.5 in double against x / 127.5 - 1 in float32, at most a few ulps of 1
    /// (1.2e-7 each). The tolerance 1e-6 is far below one 8-bit level (1 / 127.5 = 0.0078), so
    /// any pixel off by one level, in the JPEG too, fails the test.
    func testReferenceInputsMatchPillow() throws {
        let data = Self.sharedData
        guard FileManager.default.fileExists(atPath: data.path) else {
            throw XCTSkip("reference comparison skipped: ../shared/data not found")
        }
        let images = try FileManager.default
            .contentsOfDirectory(atPath: data.appendingPathComponent("images").path).sorted()
        let models = try FileManager.default
            .contentsOfDirectory(atPath: data.appendingPathComponent("reference").path).sorted()
        XCTAssertFalse(images.isEmpty, "no images in ../shared/data/images")
        XCTAssertFalse(models.isEmpty, "no models in ../shared/data/reference")
        var preprocessing = Preprocessing()
        preprocessing.mean = [127.5, 127.5, 127.5]
        preprocessing.std = [127.5, 127.5, 127.5]
        preprocessing.layout = .nhwc

        for image in images {
            let stem = (image as NSString).deletingPathExtension
            for model in models {
                let folder = data.appendingPathComponent("reference/\(model)")
                let json = try JSONSerialization.jsonObject(
                    with: Data(contentsOf: folder.appendingPathComponent("\(stem).json")))
                let shape = (json as? [String: Any])?["input_shape_nhwc"] as? [Int] ?? []
                XCTAssertEqual(shape.count, 4, "\(model)/\(stem).json: input_shape_nhwc")
                guard shape.count == 4 else { continue }

                let input = try loadPreprocessedImage(
                    path: data.appendingPathComponent("images/\(image)").path,
                    height: shape[1], width: shape[2], preprocessing: preprocessing)
                let referenceBytes = try Data(
                    contentsOf: folder.appendingPathComponent("\(stem).input.f32"))
                let reference = referenceBytes.withUnsafeBytes {
                    Array($0.bindMemory(to: Float.self))
                }
                XCTAssertEqual(input.count, reference.count, "\(model)/\(stem): element count")
                guard input.count == reference.count else { continue }

                let differences = zip(input, reference).map { abs($0 - $1) }
                let maximum = differences.max() ?? 0
                let aboveTolerance = differences.filter { $0 > 1e-6 }.count
                print("\(model)/\(image): max |Δ| \(maximum), \(aboveTolerance) of "
                      + "\(input.count) values above 1e-6")
                XCTAssertLessThanOrEqual(maximum, 1e-6, "\(model)/\(image): max |Δ|")
            }
        }
    }

    // MARK: - Decoding

    func testPPMDecodesExactly() {
        let bytes = Array("P6\n2 2\n255\n".utf8) + [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]
        let image = decode(bytes)
        XCTAssertEqual(image?.width, 2)
        XCTAssertEqual(image?.height, 2)
        XCTAssertEqual(image?.pixels, [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    }

    func testPPMCommentAndSmallMaxval() {
        // Samples scale as round(v * 255 / maxval): 7 of 15 becomes 119.
        let bytes = Array("P6 # written by hand\n3 1 # size\n15\n".utf8)
            + [0, 15, 7, 15, 0, 0, 1, 2, 3]
        XCTAssertEqual(decode(bytes)?.pixels, [0, 255, 119, 255, 0, 0, 17, 34, 51])
    }

    func testPGMSixteenBitScaled() {
        // Big-endian 16-bit samples 0, 500, 1000 of maxval 1000 become 0, 128, 255.
        let bytes = Array("P5\n3 1\n1000\n".utf8) + [0, 0, 0x01, 0xF4, 0x03, 0xE8]
        XCTAssertEqual(decode(bytes)?.pixels, [0, 0, 0, 128, 128, 128, 255, 255, 255])
    }

    private static let twoRowsRGB: [UInt8] = [255, 0, 0, 0, 255, 0, 0, 0, 255, 1, 2, 3, 4, 5, 6, 7,
                                              8, 9]

    func testBMP24BottomUp() {
        let top: [UInt8] = [0, 0, 255, 0, 255, 0, 255, 0, 0] // BGR
        let bottom: [UInt8] = [3, 2, 1, 6, 5, 4, 9, 8, 7]
        let bytes = Self.bmp(width: 3, height: 2, bitsPerPixel: 24, storedRows: [bottom, top])
        let image = decode(bytes)
        XCTAssertEqual(image?.width, 3)
        XCTAssertEqual(image?.height, 2)
        XCTAssertEqual(image?.pixels, Self.twoRowsRGB)
    }

    func testBMP24TopDown() {
        let top: [UInt8] = [0, 0, 255, 0, 255, 0, 255, 0, 0]
        let bottom: [UInt8] = [3, 2, 1, 6, 5, 4, 9, 8, 7]
        let bytes = Self.bmp(width: 3, height: -2, bitsPerPixel: 24, storedRows: [top, bottom])
        XCTAssertEqual(decode(bytes)?.pixels, Self.twoRowsRGB)
    }

    func testBMP32AndBitfields() {
        let plain = Self.bmp(width: 2, height: 1, bitsPerPixel: 32,
                             storedRows: [[30, 20, 10, 99, 60, 50, 40, 99]])
        XCTAssertEqual(decode(plain)?.pixels, [10, 20, 30, 40, 50, 60])

        // Masks in R, G, B order: red in the low byte, blue in the third byte.
        let swapped = Self.bmp(width: 2, height: 1, bitsPerPixel: 32, compression: 3,
                               masks: [0x0000_00FF, 0x0000_FF00, 0x00FF_0000],
                               storedRows: [[10, 20, 30, 0, 40, 50, 60, 0]])
        XCTAssertEqual(decode(swapped)?.pixels, [10, 20, 30, 40, 50, 60])
    }

    func testBMP16BitChannels() {
        // R5G6B5: red 31, green 32, blue 16 scale to 255, round(32 * 255 / 63) = 130 and
        // round(16 * 255 / 31) = 132.
        let rgb565 = (31 << 11) | (32 << 5) | 16
        let bytes565 = Self.bmp(width: 1, height: 1, bitsPerPixel: 16, compression: 3,
                                masks: [0xF800, 0x07E0, 0x001F],
                                storedRows: [Self.le16(rgb565)])
        XCTAssertEqual(decode(bytes565)?.pixels, [255, 130, 132])

        // Uncompressed 16-bit is X1R5G5B5: 1, 2, 3 become round(v * 255 / 31) = 8, 16, 25.
        let rgb555 = (1 << 10) | (2 << 5) | 3
        let bytes555 = Self.bmp(width: 1, height: 1, bitsPerPixel: 16,
                                storedRows: [Self.le16(rgb555)])
        XCTAssertEqual(decode(bytes555)?.pixels, [8, 16, 25])
    }

    func testBMPPalettes() {
        let palette: [UInt8] = [30, 20, 10, 0, 60, 50, 40, 0, 90, 80, 70, 0]
        let eightBit = Self.bmp(width: 3, height: 1, bitsPerPixel: 8, palette: palette,
                                storedRows: [[2, 0, 1]])
        XCTAssertEqual(decode(eightBit)?.pixels, [70, 80, 90, 10, 20, 30, 40, 50, 60])

        let fourBit = Self.bmp(width: 3, height: 1, bitsPerPixel: 4, palette: palette,
                               storedRows: [[0x21, 0x00]])
        XCTAssertEqual(decode(fourBit)?.pixels, [70, 80, 90, 40, 50, 60, 10, 20, 30])

        let oneBit = Self.bmp(width: 3, height: 1, bitsPerPixel: 1, palette: Array(palette[0..<8]),
                              storedRows: [[0b1010_0000]])
        XCTAssertEqual(decode(oneBit)?.pixels, [40, 50, 60, 10, 20, 30, 40, 50, 60])
    }

    func testPNGColourTypes() {
        let rgb = Self.png(width: 2, height: 2, bitDepth: 8, colorType: 2,
                           rows: [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
        XCTAssertEqual(decode(rgb)?.pixels, Array(1...12))

        // Palette with 2-bit indices 0, 1, 2 packed into one byte.
        let palette = Self.png(width: 3, height: 1, bitDepth: 2, colorType: 3,
                               rows: [[0b0001_1000]],
                               palette: [10, 20, 30, 40, 50, 60, 70, 80, 90])
        XCTAssertEqual(decode(palette)?.pixels, [10, 20, 30, 40, 50, 60, 70, 80, 90])

        // 16-bit grey keeps the high byte and is replicated to R, G, B.
        let grey16 = Self.png(width: 2, height: 1, bitDepth: 16, colorType: 0,
                              rows: [[0x12, 0x34, 0xAB, 0xCD]])
        XCTAssertEqual(decode(grey16)?.pixels, [0x12, 0x12, 0x12, 0xAB, 0xAB, 0xAB])

        // 1-bit grey expands to 0 and 255.
        let grey1 = Self.png(width: 3, height: 1, bitDepth: 1, colorType: 0, rows: [[0b1010_0000]])
        XCTAssertEqual(decode(grey1)?.pixels, [255, 255, 255, 0, 0, 0, 255, 255, 255])

        // Alpha is dropped, not composited.
        let rgba = Self.png(width: 1, height: 1, bitDepth: 8, colorType: 6, rows: [[10, 20, 30, 0]])
        XCTAssertEqual(decode(rgba)?.pixels, [10, 20, 30])
        let greyAlpha = Self.png(width: 1, height: 1, bitDepth: 8, colorType: 4, rows: [[99, 7]])
        XCTAssertEqual(decode(greyAlpha)?.pixels, [99, 99, 99])
    }

    /// JPEG is lossy: at quality 100 with every quantizer 1, colour conversion rounding still
    /// moves samples by a level or two, so the decoded colour is checked to within 2.
    func testJPEGColourSpaces() {
        let cases: [(String, [UInt8], Int, Int, [UInt8])] = [
            ("YCbCr", Self.solidJPEG, 16, 8, [200, 100, 50]),
            ("greyscale", Self.greyJPEG, 8, 8, [77, 77, 77]),
            ("Adobe CMYK", Self.cmykJPEG, 8, 8, [200, 100, 0]),
        ]
        for (name, bytes, width, height, colour) in cases {
            guard let image = decode(bytes) else { continue }
            XCTAssertEqual(image.width, width, "\(name) width")
            XCTAssertEqual(image.height, height, "\(name) height")
            let worst = image.pixels.enumerated()
                .map { abs(Int($0.element) - Int(colour[$0.offset % 3])) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 2, "\(name): largest deviation from \(colour)")
        }
    }

    func testFormatFromMagicBytes() throws {
        // A PPM named .jpg decodes as PPM.
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("mnc-image-test-\(UUID().uuidString).jpg").path
        try Data(Array("P6\n1 1\n255\n".utf8) + [1, 2, 3]).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertEqual(try RGBImage(contentsOf: path).pixels, [1, 2, 3])
    }

    // MARK: - Rejected input

    func testMissingFile() {
        let path = "/nonexistent-mnc-test-dir/missing.png"
        XCTAssertThrowsError(try RGBImage(contentsOf: path)) {
            XCTAssertEqual(($0 as? MNCError)?.message, "\(path): file not found")
        }
    }

    func testEmptyFile() throws {
        let path = try temporaryFile([])
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try loadPreprocessedImage(path: path, height: 8, width: 8,
                                                       preprocessing: Preprocessing())) {
            XCTAssertEqual(($0 as? MNCError)?.message, "\(path): the file is empty (0 bytes)")
        }
    }

    func testDirectoryRejected() {
        let path = FileManager.default.temporaryDirectory.path
        XCTAssertThrowsError(try RGBImage(contentsOf: path)) {
            XCTAssertEqual(($0 as? MNCError)?.message, "\(path): cannot read: it is a directory")
        }
    }

    func testNonImageBytes() {
        assertRejected(Array("hello, world".utf8),
                       "not a JPEG, PNG, BMP, PPM or PGM image: the file starts with bytes "
                       + "68 65 6c 6c")
        assertRejected([0x42], "the file starts with bytes 42")
    }

    func testTruncatedJPEG() {
        assertRejected(Array(Self.solidJPEG.dropLast(40)),
                       "truncated JPEG: the data ends at byte \(Self.solidJPEG.count - 40), "
                       + "before the end-of-image marker")
        assertRejected(Array(Self.solidJPEG.prefix(100)), "truncated JPEG")
        // Only the 2-byte end-of-image marker is missing: still rejected.
        assertRejected(Array(Self.greyJPEG.dropLast(2)), "truncated JPEG")
    }

    func testCorruptJPEG() {
        var bytes = Self.solidJPEG
        bytes[2...3] = [0xFF, 0x02] // a reserved marker in place of DQT
        assertRejected(bytes, "invalid JPEG: Unsupported marker type 0x02")
    }

    func testHugeJPEGHeader() throws {
        var bytes = Self.solidJPEG
        let sof = try XCTUnwrap(bytes.indices.dropLast().first {
            bytes[$0] == 0xFF && bytes[$0 + 1] == 0xC0
        })
        // SOF0: length (2 bytes), precision (1), then height and width, big-endian.
        bytes[(sof + 5)...(sof + 8)] = [0x4E, 0x20, 0x4E, 0x20]
        assertRejected(bytes, "JPEG image is 20000x20000 pixels, larger than the limit of "
                       + "16384x16384")
    }

    func testTruncatedPNG() {
        let bytes = Self.png(width: 16, height: 16, bitDepth: 8, colorType: 2,
                             rows: Array(repeating: Array(0..<48), count: 16))
        let idatEnd = bytes.count - 12 // IEND is the last 12 bytes
        assertRejected(Array(bytes.prefix(idatEnd - 300)), "truncated PNG: the data ends at byte")
        assertRejected(Array(bytes.prefix(idatEnd + 4)), "truncated PNG")
        assertRejected(Array(bytes.prefix(5)), "truncated PNG: the file has 5 bytes, fewer than "
                       + "the 8-byte signature")
    }

    func testCorruptPNGChecksum() {
        var bytes = Self.png(width: 1, height: 1, bitDepth: 8, colorType: 2, rows: [[1, 2, 3]])
        bytes[29] ^= 0xFF // the first byte of IHDR's CRC
        assertRejected(bytes, "invalid PNG: IHDR: CRC error")
    }

    func testHugePNGHeader() {
        let wide = Self.png(width: 16385, height: 1, bitDepth: 8, colorType: 2, rows: [[]])
        assertRejected(wide, "PNG image is 16385x1 pixels, larger than the limit of 16384x16384")

        // Within the limits, but 16000 * 16000 RGB pixels cannot come from 60 bytes of deflate.
        let short = Self.png(width: 16000, height: 16000, bitDepth: 8, colorType: 2, rows: [[]])
        assertRejected(short, "truncated PNG: a 16000x16000 image needs at least 744186 bytes of "
                       + "compressed data, but the file has \(short.count) bytes")
    }

    func testTruncatedBMP() {
        let full = Self.bmp(width: 3, height: 2, bitsPerPixel: 24,
                            storedRows: [Array(repeating: 1, count: 9), Array(repeating: 2, count: 9)])
        assertRejected(Array(full.prefix(70)), "truncated BMP: 2 rows of 12 bytes from byte offset "
                       + "54 end at byte 78, but the file has 70 bytes")
        assertRejected(Array(full.prefix(12)), "truncated BMP: the file has 12 bytes, fewer than "
                       + "the 18 bytes")
        assertRejected(Array(full.prefix(40)), "truncated BMP: the 40-byte info header ends past "
                       + "the end of the 40-byte file")
        let palette = Self.bmp(width: 1, height: 1, bitsPerPixel: 8,
                               palette: [UInt8](repeating: 0, count: 1024), storedRows: [[0]])
        assertRejected(Array(palette.prefix(100)), "truncated BMP: the 256-colour palette at byte "
                       + "offset 54 ends past the end of the 100-byte file")
    }

    func testHugeBMPHeader() {
        let bytes = Self.bmp(width: 20000, height: -20000, bitsPerPixel: 24, storedRows: [])
        assertRejected(bytes, "BMP image is 20000x20000 pixels, larger than the limit of "
                       + "16384x16384")
        // Within the limits, but the 54-byte file cannot hold 10000 rows: rejected from the
        // header before the 300 MB of pixels are allocated.
        let short = Self.bmp(width: 10000, height: 10000, bitsPerPixel: 24, storedRows: [])
        assertRejected(short, "truncated BMP: 10000 rows of 30000 bytes from byte offset 54")
    }

    func testUnsupportedBMPCompression() {
        let rle8 = Self.bmp(width: 2, height: 1, bitsPerPixel: 8, compression: 1,
                            palette: [UInt8](repeating: 0, count: 8), storedRows: [[0, 0]])
        assertRejected(rle8, "unsupported BMP compression 1 (BI_RLE8) with 8 bits per pixel at "
                       + "byte offset 30")
        let bitfields24 = Self.bmp(width: 1, height: 1, bitsPerPixel: 24, compression: 3,
                                   masks: [0xFF, 0xFF00, 0xFF0000], storedRows: [[0, 0, 0]])
        assertRejected(bitfields24, "unsupported BMP compression 3 (BI_BITFIELDS) with 24 bits "
                       + "per pixel")
    }

    func testInvalidBMPFields() {
        let planes = Self.bmp(width: 1, height: 1, bitsPerPixel: 24, storedRows: [[0, 0, 0]],
                              planes: 2)
        assertRejected(planes, "invalid BMP: planes is 2 in the info header, expected 1")

        let depth = Self.bmp(width: 1, height: 1, bitsPerPixel: 2, storedRows: [[0]])
        assertRejected(depth, "unsupported BMP bit depth 2 in the info header")

        var headerSize = Self.bmp(width: 1, height: 1, bitsPerPixel: 24, storedRows: [[0, 0, 0]])
        headerSize[14] = 64
        assertRejected(headerSize, "unsupported BMP info header size 64 at byte offset 14")

        var offset = Self.bmp(width: 1, height: 1, bitsPerPixel: 24, storedRows: [[0, 0, 0]])
        offset[10] = 20
        assertRejected(offset, "invalid BMP: the pixel data offset 20 at byte offset 10 points "
                       + "into the headers, which end at byte offset 54")

        let zeroWidth = Self.bmp(width: 0, height: 1, bitsPerPixel: 24, storedRows: [])
        assertRejected(zeroWidth, "invalid BMP header: width 0 and height 1 must both be positive")

        let index = Self.bmp(width: 2, height: 1, bitsPerPixel: 8,
                             palette: [0, 0, 0, 0, 255, 255, 255, 0], storedRows: [[1, 5]])
        assertRejected(index, "invalid BMP: pixel (1, 0) has palette index 5, but the palette "
                       + "has 2 colours")

        let mask = Self.bmp(width: 1, height: 1, bitsPerPixel: 32, compression: 3,
                            masks: [0xF0F0, 0xFF00_0000, 0xFF], storedRows: [[0, 0, 0, 0]])
        assertRejected(mask, "invalid BMP: the red channel mask 0x0000f0f0 at byte offset 54 is "
                       + "not one contiguous run of bits")

        let colours = Self.bmp(width: 1, height: 1, bitsPerPixel: 1,
                               palette: [UInt8](repeating: 0, count: 12), storedRows: [[0]])
        assertRejected(colours, "invalid BMP: 3 colours used at byte offset 46, more than the 2 "
                       + "that 1 bits per pixel can index")
    }

    func testTruncatedPPM() {
        assertRejected(Array("P6\n2 2\n255\n".utf8) + [1, 2, 3, 4, 5],
                       "truncated PPM: 2x2 pixels need 12 bytes of samples at byte offset 11, "
                       + "but only 5 remain")
        assertRejected(Array("P5\n2 2\n".utf8), "truncated PGM: the header ends before the "
                       + "maxval field")
        assertRejected(Array("P6\n2 2\n255".utf8), "truncated PPM: the file ends after the "
                       + "maxval field")
    }

    func testHugePPMHeader() {
        assertRejected(Array("P6\n100000 100000\n255\n".utf8),
                       "PPM image is 100000x100000 pixels, larger than the limit of 16384x16384")
        assertRejected(Array("P5\n99999999999999 1\n255\n".utf8),
                       "PGM image is 999999999x1 pixels, larger than the limit")
    }

    func testInvalidPPMFields() {
        assertRejected(Array("P6\nab".utf8), "invalid PPM header: expected whitespace and a "
                       + "decimal width at byte offset 3, found byte 0x61")
        assertRejected(Array("P6\n1 1\n70000\n".utf8) + [0, 0, 0, 0, 0, 0],
                       "invalid PPM header: maxval 70000 is outside 1...65535")
        assertRejected(Array("P6\n1 1\n0\n".utf8) + [0, 0, 0],
                       "invalid PPM header: maxval 0 is outside 1...65535")
        assertRejected(Array("P5\n2 1\n100\n".utf8) + [50, 200],
                       "invalid PGM: sample value 200 at byte offset 12 exceeds maxval 100")
        assertRejected(Array("P6\n1 1\n255x".utf8) + [0, 0, 0],
                       "invalid PPM header: expected whitespace after maxval at byte offset 10, "
                       + "found byte 0x78")
        assertRejected(Array("P6\n0 1\n255\n".utf8), "invalid PPM header: width 0 and height 1")
        assertRejected(Array("P3\n1 1\n255\n0 0 0\n".utf8), "unsupported netpbm variant P3; only "
                       + "binary PGM (P5) and PPM (P6) can be read")
    }

    // MARK: - Preprocessing

    private func preprocess(_ image: RGBImage, height: Int, width: Int,
                            resizeShorterSide: Int? = nil, cropFraction: Double = 1,
                            layout: TensorLayout = .nhwc, mean: [Double] = [0, 0, 0],
                            std: [Double] = [1, 1, 1]) throws -> [Float] {
        var preprocessing = Preprocessing()
        preprocessing.resizeShorterSide = resizeShorterSide
        preprocessing.cropFraction = cropFraction
        preprocessing.layout = layout
        preprocessing.mean = mean
        preprocessing.std = std
        return try image.preprocessed(height: height, width: width, preprocessing: preprocessing,
                                      name: "test image")
    }

    /// Builds an image whose pixel (x, y) is `rgb(x, y)`.
    private func makeImage(width: Int, height: Int,
                           _ rgb: (Int, Int) -> [UInt8]) throws -> RGBImage {
        var pixels: [UInt8] = []
        for y in 0..<height {
            for x in 0..<width {
                pixels += rgb(x, y)
            }
        }
        return try RGBImage(width: width, height: height, pixels: pixels)
    }

    /// Returns the R channel of an NHWC output, row by row.
    private func redRows(_ values: [Float], width: Int) -> [[Float]] {
        let red = stride(from: 0, to: values.count, by: 3).map { values[$0] }
        return stride(from: 0, to: red.count, by: width).map { Array(red[$0..<$0 + width]) }
    }

    func testResizeKeepsConstantImage() throws {
        let image = try makeImage(width: 37, height: 23) { _, _ in [10, 128, 250] }
        let expected: [Float] = [10, 128, 250]
        let cases: [(String, Int, Int, Int?)] = [
            ("downscale", 7, 5, nil), ("upscale", 50, 40, nil), ("same size", 23, 23, nil),
            ("torchvision", 9, 11, 13),
        ]
        for (name, height, width, shorter) in cases {
            let output = try preprocess(image, height: height, width: width,
                                        resizeShorterSide: shorter)
            XCTAssertEqual(output, Self.constantFloats(expected, count: height * width), name)
        }
    }

    private static func constantFloats(_ values: [Float], count: Int) -> [Float] {
        (0..<count).flatMap { _ in values }
    }

    /// Halves 4 columns 0, 40, 80, 120. The triangle filter widened to 2 pixels gives output 0
    /// (centre 1.0) weights 0.75, 0.75, 0.25 on inputs 0...2. Output 1 (centre 3.0) gets weights
    /// 0.25, 0.75, 0.75 on inputs 1...3. Both are normalized by 1.75, so 200/7 = 28.57 rounds to
    /// 29 and 640/7 = 91.43 rounds to 91.
    func testDownscaleByHand() throws {
        let image = try makeImage(width: 4, height: 4) { x, _ in [UInt8(40 * x), 7, 0] }
        let output = try preprocess(image, height: 2, width: 2)
        XCTAssertEqual(redRows(output, width: 2), [[29, 91], [29, 91]])
        XCTAssertEqual(output[1], 7, "constant green channel")
    }

    /// Doubling columns 0, 100: centres 0.25, 0.75, 1.25, 1.75 in input coordinates give
    /// weights (1), (0.75, 0.25), (0.25, 0.75), (1), the edges clamped, so 0, 25, 75, 100.
    func testUpscaleByHand() throws {
        let image = try makeImage(width: 2, height: 2) { x, _ in [UInt8(100 * x), 0, 0] }
        let output = try preprocess(image, height: 4, width: 4)
        XCTAssertEqual(redRows(output, width: 4), Array(repeating: [0, 25, 75, 100], count: 4))
    }

    /// Convention a crops the centred square with left = (7 - 4) // 2 = 1, so a 4x4 output of
    /// the ramp 10 * x is columns 1...4 unchanged.
    func testCentreCropRoundsDown() throws {
        let image = try makeImage(width: 7, height: 4) { x, _ in [UInt8(10 * x), 0, 0] }
        let output = try preprocess(image, height: 4, width: 4)
        XCTAssertEqual(redRows(output, width: 4), Array(repeating: [10, 20, 30, 40], count: 4))
    }

    /// crop_fraction 0.5 of an 8x8 image keeps the centre 4x4 square (rows and columns 2...5).
    func testCropFraction() throws {
        let image = try makeImage(width: 8, height: 8) { x, y in
            (2...5).contains(x) && (2...5).contains(y) ? [200, 200, 200] : [0, 0, 0]
        }
        let output = try preprocess(image, height: 4, width: 4, cropFraction: 0.5)
        XCTAssertEqual(output, Self.constantFloats([200, 200, 200], count: 16))
    }

    /// torchvision: 12x6 resized to shorter side 3 is 6x3 (scale 2, interior weights 1/8, 3/8,
    /// 3/8, 1/8 keep the ramp linear: 20 * x + 5; edges 50/7 -> 7 and 720/7 -> 103), so the row
    /// is 7, 25, 45, 65, 85, 103. CenterCrop(3) starts at round((6 - 3) / 2) = round(1.5) = 2
    /// (ties to even) and keeps 45, 65, 85.
    func testTorchvisionCropRoundsHalfToEven() throws {
        let image = try makeImage(width: 12, height: 6) { x, _ in [UInt8(10 * x), 0, 0] }
        let output = try preprocess(image, height: 3, width: 3, resizeShorterSide: 3)
        XCTAssertEqual(redRows(output, width: 3), Array(repeating: [45, 65, 85], count: 3))
    }

    /// torchvision: 11x6 resized to shorter side 3 is int(3 * 11 / 6) = int(5.5) = 5 wide, so a
    /// 7-wide CenterCrop pads (7 - 5) // 2 = 1 column of zeros on the left and 1 on the right.
    func testTorchvisionSizeAndPadding() throws {
        let image = try makeImage(width: 11, height: 6) { _, _ in [200, 200, 200] }
        let output = try preprocess(image, height: 3, width: 7, resizeShorterSide: 3)
        XCTAssertEqual(redRows(output, width: 7),
                       Array(repeating: [0, 200, 200, 200, 200, 200, 0], count: 3))
    }

    func testNormalizationAndLayouts() throws {
        let image = try makeImage(width: 3, height: 3) { _, _ in [110, 120, 130] }
        let mean = [10.0, 20, 30]
        let std = [2.0, 4, 5]
        let nchw = try preprocess(image, height: 2, width: 2, layout: .nchw, mean: mean, std: std)
        XCTAssertEqual(nchw, [50, 50, 50, 50, 25, 25, 25, 25, 20, 20, 20, 20])
        let nhwc = try preprocess(image, height: 2, width: 2, layout: .nhwc, mean: mean, std: std)
        XCTAssertEqual(nhwc, [50, 25, 20, 50, 25, 20, 50, 25, 20, 50, 25, 20])
    }

    func testInvalidPreprocessing() throws {
        let image = try makeImage(width: 2, height: 2) { _, _ in [0, 0, 0] }
        let cases: [(String, () throws -> [Float], String)] = [
            ("zero std", { try self.preprocess(image, height: 2, width: 2, std: [1, 0, 1]) },
             "invalid preprocessing: channel 1 needs a finite mean and a finite nonzero std, got "
             + "mean 0 and std 0"),
            ("two means", { try self.preprocess(image, height: 2, width: 2, mean: [0, 0]) },
             "invalid preprocessing: mean and std need 3 values each (R, G, B), got 2 and 3"),
            ("zero height", { try self.preprocess(image, height: 0, width: 2) },
             "invalid preprocessing: input size 2x0 must be within 1...16384 on each side"),
            ("crop fraction", { try self.preprocess(image, height: 2, width: 2, cropFraction: 1.5) },
             "invalid preprocessing: crop_fraction 1.5 must be in (0, 1]"),
            ("shorter side", { try self.preprocess(image, height: 2, width: 2,
                                                   resizeShorterSide: -1) },
             "invalid preprocessing: resize_shorter_side -1 must be 0 or within 1...16384"),
        ]
        for (name, body, expected) in cases {
            XCTAssertThrowsError(try body(), name) {
                XCTAssertEqual(($0 as? MNCError)?.message, "test image: \(expected)", name)
            }
        }
    }

    // MARK: - Embedded copy

    func testEmbeddedSourceMatchesFiles() throws {
        let folder = Self.packageRoot.appendingPathComponent("Sources/CImage")
        let header = try String(contentsOf: folder.appendingPathComponent("include/mnc_image.h"),
                                encoding: .utf8)
        let source = try String(contentsOf: folder.appendingPathComponent("mnc_image.c"),
                                encoding: .utf8)
        XCTAssertTrue(EmbeddedImageSource.header == header,
                      "EmbeddedImageSource.header differs from mnc_image.h: run Scripts/embed-image-source.sh")
        XCTAssertTrue(EmbeddedImageSource.source == source,
                      "EmbeddedImageSource.source differs from mnc_image.c: run Scripts/embed-image-source.sh")
    }
}
