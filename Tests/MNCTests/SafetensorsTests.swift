import Foundation
import XCTest
@testable import MNC

final class SafetensorsTests: XCTestCase {
    override class func tearDown() {
        WeightFixtures.removeTemporaryFiles()
        super.tearDown()
    }

    private typealias Fixtures = WeightFixtures

    private func read(header: String, data: [UInt8]) throws -> WeightFile {
        try Safetensors.read(Fixtures.safetensors(header: header, data: data), path: "test.safetensors")
    }

    /// One-tensor header with the given fields.
    private func header(_ name: String = "w", dtype: String, shape: String, offsets: String) -> String {
        "{\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":\(offsets)}}"
    }

    // MARK: - Conversion

    func testF32Values() throws {
        let values: [Float] = [1.5, -2, 0.1, .infinity]
        let file = try read(header: header(dtype: "F32", shape: "[2,2]", offsets: "[0,16]"), data: Fixtures.float32Bytes(values))
        XCTAssertEqual(file.format, "safetensors")
        XCTAssertEqual(file.tensors.count, 1)
        XCTAssertEqual(file.tensors.first?.name, "w")
        XCTAssertEqual(file.tensors.first?.dtype, "F32")
        XCTAssertEqual(file.tensors.first?.shape, [2, 2])
        XCTAssertEqual(file.tensors.first?.data.map(\.bitPattern), values.map(\.bitPattern))
    }

    func testF16Conversion() throws {
        // binary16 bit patterns and their exact values (IEEE 754-2008 binary16: 1 sign, 5 exponent, 10 mantissa bits).
        let cases: [(bits: UInt16, value: Float)] = [
            (0x3C00, 1.0), (0xC000, -2.0), (0x7BFF, 65504.0), (0x3555, 0.333251953125),
            (0x0400, 0x1p-14), (0x0001, 0x1p-24), (0x03FF, 1023 * 0x1p-24),
            (0x0000, 0.0), (0x8000, -0.0), (0x7C00, .infinity), (0xFC00, -.infinity),
        ]
        let data = cases.flatMap { Fixtures.littleEndian($0.bits) } + Fixtures.littleEndian(UInt16(0x7E00))
        let count = cases.count + 1
        let file = try read(header: header(dtype: "F16", shape: "[\(count)]", offsets: "[0,\(2 * count)]"), data: data)
        let converted = try XCTUnwrap(file.tensors.first?.data)
        XCTAssertEqual(converted.count, count)
        for (index, testCase) in cases.enumerated() where index < converted.count {
            XCTAssertEqual(converted[index].bitPattern, testCase.value.bitPattern, "binary16 0x\(String(testCase.bits, radix: 16))")
        }
        XCTAssertTrue(converted.last?.isNaN ?? false, "binary16 0x7e00 is NaN")
    }

    func testBF16Conversion() throws {
        // bfloat16 is the upper half of a float32.
        let cases: [(bits: UInt16, value: Float)] = [
            (0x3F80, 1.0), (0xC040, -3.0), (0x3F81, 1.0078125),
            (0x0001, Float(bitPattern: 0x0001_0000)), (0xFF80, -.infinity), (0x8000, -0.0),
        ]
        let data = cases.flatMap { Fixtures.littleEndian($0.bits) }
        let file = try read(header: header(dtype: "BF16", shape: "[\(cases.count)]", offsets: "[0,\(2 * cases.count)]"), data: data)
        XCTAssertEqual(file.tensors.first?.dtype, "BF16")
        XCTAssertEqual(file.tensors.first?.data.map(\.bitPattern), cases.map(\.value.bitPattern))
    }

    func testF64AndIntegerConversion() throws {
        let doubles: [Double] = [0.1, -2.5, 1e300]
        let int64s: [Int64] = [-3, 1 << 40, 7]
        let int32s: [Int32] = [-5, 123_456]
        let data = doubles.flatMap { Fixtures.littleEndian($0.bitPattern) }
            + int64s.flatMap { Fixtures.littleEndian($0) }
            + int32s.flatMap { Fixtures.littleEndian($0) }
        let text = """
            {"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},
             "l":{"dtype":"I64","shape":[3],"data_offsets":[24,48]},
             "i":{"dtype":"I32","shape":[2],"data_offsets":[48,56]}}
            """
        let tensors = try read(header: text, data: data).tensors
        XCTAssertEqual(tensors.map(\.dtype), ["F64", "I64", "I32"])
        XCTAssertEqual(tensors.first?.data.map(\.bitPattern), [Float(0.1).bitPattern, Float(-2.5).bitPattern, Float.infinity.bitPattern])
        XCTAssertEqual(tensors.dropFirst().first?.data, [-3, 1_099_511_627_776, 7])
        XCTAssertEqual(tensors.last?.data, [-5, 123_456])
    }

    // MARK: - Layout

    func testHeaderOrderKept() throws {
        // Data lies in the order a, m, z; the header lists z, a, m, and that order is the file order.
        let text = """
            {"z":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},
             "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
             "m":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}
            """
        let file = try read(header: text, data: Fixtures.float32Bytes([1, 2, 3]))
        XCTAssertEqual(file.tensors.map(\.name), ["z", "a", "m"])
        XCTAssertEqual(file.tensors.map(\.data), [[3], [1], [2]])
    }

    func testMetadataEscapesAndPadding() throws {
        let text = #"{"__metadata__":{"format":"pt"},"a\u00e9\"b\ud83d\ude00":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"# + "    "
        let file = try read(header: text, data: Fixtures.float32Bytes([4]))
        XCTAssertEqual(file.tensors.map(\.name), ["aé\"b😀"])
        XCTAssertEqual(file.tensors.first?.data, [4])
    }

    func testScalarAndEmptyShapes() throws {
        let text = """
            {"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},
             "e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}}
            """
        let file = try read(header: text, data: Fixtures.float32Bytes([9]))
        XCTAssertEqual(file.tensors.map(\.shape), [[], [0, 3]])
        XCTAssertEqual(file.tensors.map(\.data), [[9], []])
    }

    func testLoadWeightFileDetectsSafetensors() throws {
        let bytes = Fixtures.safetensors(header: header(dtype: "F32", shape: "[1]", offsets: "[0,4]"), data: Fixtures.float32Bytes([2]))
        let path = try Fixtures.writeTemporaryFile(bytes, name: "one.safetensors")
        let file = try loadWeightFile(path: path)
        XCTAssertEqual(file.format, "safetensors")
        XCTAssertEqual(file.path, path)
        XCTAssertEqual(file.tensors.first?.data, [2])
    }

    func testDescribeListing() throws {
        let text = """
            {"features.0.weight":{"dtype":"F32","shape":[2,1,1,1],"data_offsets":[0,8]},
             "bias":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}
            """
        let file = try Safetensors.read(Fixtures.safetensors(header: text, data: [UInt8](repeating: 0, count: 14)), path: "m.safetensors")
        let expected = """
            m.safetensors (safetensors)
            features.0.weight  F32  [2, 1, 1, 1]
            bias               F16  [3]
            total: 2 tensors, 5 elements
            """
        XCTAssertEqual(describeWeightFile(file), expected)
    }

    // MARK: - Other formats and files

    private func assertLoadError(_ bytes: [UInt8], name: String, contains fragment: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let path = try Fixtures.writeTemporaryFile(bytes, name: name)
        XCTAssertThrowsError(try loadWeightFile(path: path), file: file, line: line) { error in
            let message = (error as? MNCError)?.message ?? "\(error)"
            XCTAssertTrue(message.hasPrefix(path), message, file: file, line: line)
            XCTAssertTrue(message.contains(fragment), "'\(fragment)' not in: \(message)", file: file, line: line)
        }
    }

    func testTFLiteRejected() throws {
        let bytes: [UInt8] = [0x1C, 0, 0, 0] + Array("TFL3".utf8) + [UInt8](repeating: 0, count: 24)
        try assertLoadError(bytes, name: "model.tflite", contains: "TFLite files are read by the model-file loader")
    }

    func testONNXRejected() throws {
        try assertLoadError([0x08, 0x07], name: "model.onnx", contains: "ONNX files are read by the model-file loader")
    }

    func testMissingFile() {
        XCTAssertThrowsError(try loadWeightFile(path: "/nonexistent/weights.safetensors")) { error in
            XCTAssertEqual((error as? MNCError)?.message, "/nonexistent/weights.safetensors: file not found")
        }
    }

    // MARK: - Bad input

    private func assertReadError(_ bytes: [UInt8], contains fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Safetensors.read(bytes, path: "bad.safetensors"), file: file, line: line) { error in
            guard let error = error as? MNCError else {
                return XCTFail("expected MNCError, got \(error)", file: file, line: line)
            }
            XCTAssertFalse(error.message.contains("\n"), "message is not one line: \(error.message)", file: file, line: line)
            XCTAssertTrue(error.message.hasPrefix("bad.safetensors: "), error.message, file: file, line: line)
            for fragment in fragments {
                XCTAssertTrue(error.message.contains(fragment), "'\(fragment)' not in: \(error.message)", file: file, line: line)
            }
        }
    }

    private func assertHeaderError(_ header: String, dataSize: Int = 16, contains fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        let bytes = Fixtures.safetensors(header: header, data: [UInt8](repeating: 0, count: dataSize))
        assertReadError(bytes, contains: fragments, file: file, line: line)
    }

    func testTruncatedLengthField() {
        assertReadError([0x10, 0, 0], contains: ["truncated safetensors file: 3 bytes"])
    }

    func testEveryTruncationRejected() {
        let bytes = Fixtures.safetensors(header: header(dtype: "F32", shape: "[2]", offsets: "[0,8]"), data: Fixtures.float32Bytes([1, 2]))
        for length in 0..<bytes.count {
            XCTAssertThrowsError(try Safetensors.read(Array(bytes.prefix(length)), path: "bad.safetensors"), "prefix of \(length) bytes") { error in
                XCTAssertTrue(error is MNCError, "prefix of \(length) bytes: \(error)")
            }
        }
    }

    func testCorruptBytesNeverTrap() {
        // Each single-byte change must load or throw MNCError; a trap would abort the test run.
        let text = #"{"__metadata__":{"k":"v"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        let bytes = Fixtures.safetensors(header: text, data: [UInt8](repeating: 0x3C, count: 8))
        for position in bytes.indices {
            var corrupt = bytes
            corrupt[position] ^= 0xFF
            do {
                _ = try Safetensors.read(corrupt, path: "bad.safetensors")
            } catch {
                XCTAssertTrue(error is MNCError, "byte \(position): \(error)")
            }
        }
    }

    func testHeaderLengthBeyondFile() {
        assertReadError(Fixtures.littleEndian(UInt64(100)) + Array("{}".utf8), contains: ["header length 100 is larger than the 2 bytes"])
    }

    func testHeaderLengthOverLimit() {
        assertReadError(Fixtures.littleEndian(UInt64(200_000_000)) + Array("{}".utf8), contains: ["header length 200000000 exceeds the limit of 100000000 bytes"])
    }

    func testHeaderLengthHugeValue() {
        assertReadError(Fixtures.littleEndian(UInt64.max) + Array("{}".utf8), contains: ["header length 18446744073709551615 exceeds the limit"])
    }

    func testOffsetsOutsideData() {
        assertHeaderError(header(dtype: "F32", shape: "[2]", offsets: "[12,20]"), contains: ["tensor 'w'", "data_offsets [12, 20] extend past the 16-byte data section"])
    }

    func testOverlappingRanges() {
        let text = """
            {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
             "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}
            """
        assertHeaderError(text, contains: ["tensors 'a' at data_offsets [0, 8] and 'b' at [4, 12] overlap"])
    }

    func testNegativeOffset() {
        assertHeaderError(header(dtype: "F32", shape: "[1]", offsets: "[-4,0]"), contains: ["tensor 'w'", "'data_offsets' contains negative value -4"])
    }

    func testNonIntegerOffset() {
        assertHeaderError(header(dtype: "F32", shape: "[1]", offsets: "[0,4.0]"), contains: ["tensor 'w'", "non-integer value 4.0"])
    }

    func testOffsetTooLarge() {
        assertHeaderError(header(dtype: "F32", shape: "[1]", offsets: "[0,99999999999999999999]"), contains: ["tensor 'w'", "value 99999999999999999999 is too large"])
    }

    func testBeginAfterEnd() {
        assertHeaderError(header(dtype: "F32", shape: "[0]", offsets: "[8,4]"), contains: ["data_offsets [8, 4] has begin after end"])
    }

    func testOffsetsOneValue() {
        assertHeaderError(header(dtype: "F32", shape: "[1]", offsets: "[4]"), contains: ["data_offsets has 1 values"])
    }

    func testByteSizeMismatch() {
        assertHeaderError(header(dtype: "F32", shape: "[3]", offsets: "[0,8]"), contains: ["tensor 'w'", "span 8 bytes, but shape [3] of F32 needs 12"])
    }

    func testElementCountOverflow() {
        assertHeaderError(header(dtype: "F32", shape: "[4294967296,4294967296]", offsets: "[0,4]"), contains: ["tensor 'w'", "element count of shape [4294967296, 4294967296] overflows"])
    }

    func testByteSizeOverflow() {
        assertHeaderError(header(dtype: "F64", shape: "[4611686018427387904]", offsets: "[0,8]"), contains: ["tensor 'w'", "byte size of shape"])
    }

    func testNegativeDimension() {
        assertHeaderError(header(dtype: "F32", shape: "[-1]", offsets: "[0,4]"), contains: ["tensor 'w'", "'shape' contains negative value -1"])
    }

    func testDuplicateKeys() {
        let text = """
            {"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}
            """
        // The second "w" starts at byte 54 of the header, which starts at file offset 8.
        assertHeaderError(text, contains: ["invalid JSON header at offset 62", "duplicate key 'w'"])
    }

    func testDuplicateFieldKeys() {
        let text = #"{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#
        assertHeaderError(text, contains: ["duplicate key 'dtype'"])
    }

    func testInvalidJSON() {
        let cases: [(header: String, fragment: String)] = [
            (#"{"w":{"dtype":"F32",}}"#, "expected a string key"),
            (#"{"w":1"#, "unexpected end, expected ',' or '}'"),
            (#"{"w":"abc}"#, "unterminated string"),
            (#"{"w":"\x"}"#, "invalid escape sequence"),
            (#"{"w":"\ud800"}"#, "unpaired UTF-16 surrogate"),
            ("{\"w\":\"a\u{01}\"}", "unescaped control character"),
            (#"{"w":01}"#, "expected ',' or '}'"),
            (#"{"w":tru}"#, "invalid literal"),
            (#"{} {}"#, "unexpected content after the JSON value"),
            ("", "unexpected end, expected a value"),
        ]
        for testCase in cases {
            assertHeaderError(testCase.header, contains: ["invalid JSON header", testCase.fragment])
        }
    }

    func testInvalidUTF8InHeader() {
        let headerBytes: [UInt8] = Array(#"{"w"#.utf8) + [0xFF] + Array(#"":{}}"#.utf8)
        let bytes = Fixtures.littleEndian(UInt64(headerBytes.count)) + headerBytes
        assertReadError(bytes, contains: ["invalid JSON header at offset 9", "not valid UTF-8"])
    }

    func testDeepNesting() {
        let text = #"{"w":"# + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "}"
        assertHeaderError(text, contains: ["nesting deeper than 64 levels"])
    }

    func testHeaderNotObject() {
        assertHeaderError("[1,2]", contains: ["header is not a JSON object"])
    }

    func testUnsupportedDtype() {
        assertHeaderError(header(dtype: "U8", shape: "[4]", offsets: "[0,4]"), contains: ["tensor 'w'", "unsupported dtype 'U8'"])
    }

    func testMissingField() {
        assertHeaderError(#"{"w":{"dtype":"F32","shape":[1]}}"#, contains: ["tensor 'w'", "missing field 'data_offsets'"])
    }

    func testMetadataNotStrings() {
        assertHeaderError(#"{"__metadata__":{"epoch":3}}"#, contains: ["__metadata__ value for 'epoch' is not a string"])
    }

    // MARK: - Real files

    func testRealFilesLoad() throws {
        var loaded = 0
        for caseDirectory in try Fixtures.torchCaseDirectories() {
            let caseName = caseDirectory.lastPathComponent
            let file = try loadWeightFile(path: caseDirectory.appendingPathComponent("weights.safetensors").path)
            XCTAssertEqual(file.format, "safetensors", caseName)
            XCTAssertTrue(file.tensors.contains { $0.name == "features.0.0.weight" }, caseName)

            // case.json "parameters" counts the trainable tensors: every weight and bias.
            let caseData = try Data(contentsOf: caseDirectory.appendingPathComponent("case.json"))
            let caseInfo = try XCTUnwrap(try JSONSerialization.jsonObject(with: caseData) as? [String: Any], caseName)
            let parameters = try XCTUnwrap(caseInfo["parameters"] as? Int, caseName)
            let trainable = file.tensors
                .filter { $0.name.hasSuffix(".weight") || $0.name.hasSuffix(".bias") }
                .reduce(0) { $0 + $1.data.count }
            XCTAssertEqual(trainable, parameters, caseName)
            for tensor in file.tensors {
                XCTAssertEqual(tensor.data.count, tensor.shape.reduce(1, *), "\(caseName) \(tensor.name)")
            }
            loaded += 1
        }
        XCTAssertGreaterThan(loaded, 0, "no cases found under data/torch")
    }

    func testRealFileKnownValues() throws {
        let torch = try Fixtures.sharedDataDirectory().appendingPathComponent("torch")
        let v2 = try loadWeightFile(path: torch.appendingPathComponent("mobilenet_v2_1.0_224/weights.safetensors").path)
        let v2ByName = Dictionary(uniqueKeysWithValues: v2.tensors.map { ($0.name, $0) })
        XCTAssertEqual(v2.tensors.count, 314)
        XCTAssertEqual(v2ByName["features.0.0.weight"]?.shape, [32, 3, 3, 3])
        XCTAssertEqual(v2ByName["classifier.1.weight"]?.shape, [1000, 1280])
        XCTAssertEqual(v2ByName["features.0.1.num_batches_tracked"]?.dtype, "I64")
        XCTAssertEqual(v2ByName["features.0.1.num_batches_tracked"]?.data, [0])
        // Bit patterns read with Python's struct module at the header's data_offsets.
        XCTAssertEqual(v2ByName["features.0.0.weight"]?.data.prefix(4).map(\.bitPattern), [0x3DF9_84EC, 0xBD73_A21C, 0xBA96_4A7A, 0xBC7D_22EF])
        XCTAssertEqual(v2ByName["classifier.1.bias"]?.data.prefix(2).map(\.bitPattern), [0x3E76_7B24, 0x3EE0_D3C4])

        let v3 = try loadWeightFile(path: torch.appendingPathComponent("mobilenet_v3_large_1.0_224/weights.safetensors").path)
        let v3ByName = Dictionary(uniqueKeysWithValues: v3.tensors.map { ($0.name, $0) })
        XCTAssertEqual(v3.tensors.count, 312)
        XCTAssertEqual(v3ByName["features.0.0.weight"]?.shape, [16, 3, 3, 3])
        XCTAssertEqual(v3ByName["classifier.3.bias"]?.shape, [1000])
        XCTAssertEqual(v3ByName["classifier.3.bias"]?.data.prefix(2).map(\.bitPattern), [0xBEDE_84AE, 0x3E9F_DE6E])
    }
}
