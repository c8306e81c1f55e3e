import Foundation
import XCTest
@testable import MNC

final class TFLiteTests: XCTestCase {
    // MARK: Dequantization of hand-built files

    /// Parses a one-tensor model whose tensor is `tensor`.
    private func singleTensorModel(_ tensor: TFLiteTensorSpec) throws -> TFLiteModel {
        let bytes = FlatBufferWriter.file(root: tfliteModelValue(tensors: [tensor], operators: [], inputs: []))
        return try TFLiteModel.parse(bytes: bytes, path: "test.tflite")
    }

    func testPerTensorUint8() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "w", type: 3, shape: [2, 2], data: uint8Bytes([0, 128, 255, 10]), scale: [0.5], zeroPoint: [128]))
        let values = try model.values(ofTensor: 0)
        XCTAssertEqual(values, [-64, 0, 63.5, -59])
        XCTAssertEqual(model.tensors[0].quantization?.zeroPoint, [128])
    }

    func testPerChannelInt8AlongFirstDimension() throws {
        // (q - zero_point[c]) * scale[c] with c the index along dimension 0.
        let data: [Int8] = [-2, 0, 3, -1, 1, 4]
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "w", type: 9, shape: [2, 3], data: data.map { UInt8(bitPattern: $0) },
            scale: [0.5, 2], zeroPoint: [0, -1], quantizedDimension: 0))
        XCTAssertEqual(try model.values(ofTensor: 0), [-1, 0, 1.5, 0, 4, 10])
    }

    func testPerChannelAlongLastDimension() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "w", type: 3, shape: [2, 3], data: uint8Bytes([1, 1, 1, 2, 2, 2]),
            scale: [1, 2, 4], zeroPoint: [0, 0, 1], quantizedDimension: 1))
        XCTAssertEqual(try model.values(ofTensor: 0), [1, 2, 0, 2, 4, 4])
    }

    func testInt32BiasDequantization() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "b", type: 2, shape: [2], data: int32Bytes([100, -7]), scale: [0.25], zeroPoint: [0]))
        XCTAssertEqual(try model.values(ofTensor: 0), [25, -1.75])
    }

    func testInt32WithoutQuantization() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(name: "shape", type: 2, shape: [2], data: int32Bytes([-1, 1001])))
        XCTAssertEqual(try model.values(ofTensor: 0), [-1, 1001])
        XCTAssertNil(model.tensors[0].quantization)
    }

    func testFloat32PassesThrough() throws {
        let values: [Float] = [1.5, -0.25, 3e-8]
        let model = try singleTensorModel(TFLiteTensorSpec(name: "f", type: 0, shape: [3], data: float32Bytes(values)))
        XCTAssertEqual(try model.values(ofTensor: 0), values)
    }

    func testFloat16Conversion() throws {
        // IEEE 754 binary16: 1.0, -2.0, 0x3555 = 0.333251953125, the smallest subnormal 2^-24, +infinity.
        let bits: [UInt16] = [0x3C00, 0xC000, 0x3555, 0x0001, 0x7C00]
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "h", type: 1, shape: [5], data: bits.flatMap { littleEndianBytes($0) }))
        let values = try model.values(ofTensor: 0)
        XCTAssertEqual(values[0], 1)
        XCTAssertEqual(values[1], -2)
        XCTAssertEqual(values[2], 0.333251953125)
        XCTAssertEqual(values[3], 5.9604644775390625e-08)
        XCTAssertEqual(values[4], .infinity)
    }

    func testBufferOutsideFlatbuffer() throws {
        // Files over 2 GB keep buffer data after the flatbuffer, located by `offset` and `size`
        // from the start of the file. The flatbuffer's length does not depend on the offset value.
        func model(offset: UInt64, size: UInt64) -> FlatValue {
            let tensor = FlatValue.table([(0, .int32s([3])), (1, .i8(3)), (2, .u32(1)), (3, .string("w"))])
            let subgraph = FlatValue.table([(0, .tables([tensor]))])
            let buffers = FlatValue.tables([.table([]), .table([(1, .u64(offset)), (2, .u64(size))])])
            return .table([(0, .u32(3)), (2, .tables([subgraph])), (4, buffers)])
        }
        let length = FlatBufferWriter.file(root: model(offset: 0, size: 0)).count
        let bytes = FlatBufferWriter.file(root: model(offset: UInt64(length), size: 3)) + [7, 8, 9]
        let parsed = try TFLiteModel.parse(bytes: bytes, path: "large.tflite")
        XCTAssertEqual(try parsed.values(ofTensor: 0), [7, 8, 9])

        let beyond = FlatBufferWriter.file(root: model(offset: UInt64(length), size: 4)) + [7, 8, 9]
        assertMNCError(try TFLiteModel.parse(bytes: beyond, path: "large.tflite"),
                       contains: "Model.buffers[1]: data at offset \(length) of 4 bytes extends past the end of the file (\(length + 3) bytes)")
    }

    func testOptionsAndOperatorCodes() throws {
        let tensors = [
            TFLiteTensorSpec(name: "x", type: 0, shape: [1, 4, 4, 2]),
            TFLiteTensorSpec(name: "w", type: 0, shape: [3, 3, 3, 2], data: float32Bytes([Float](repeating: 0, count: 54))),
            TFLiteTensorSpec(name: "y", type: 0, shape: [1, 2, 2, 3]),
        ]
        let ops = [TFLiteOperatorSpec(builtinCode: 3, inputs: [0, 1, -1], outputs: [2], optionsType: 1,
                                      options: conv2DOptions(padding: 1, stride: 2, activation: 1, dilation: 2))]
        let model = try TFLiteModel.parse(
            bytes: FlatBufferWriter.file(root: tfliteModelValue(tensors: tensors, operators: ops)), path: "t.tflite")
        XCTAssertEqual(model.operators.count, 1)
        XCTAssertEqual(model.operators[0].builtinCode, 3)
        XCTAssertEqual(model.operators[0].inputs, [0, 1, -1])
        XCTAssertEqual(model.operators[0].options, .conv2D(TFLiteModel.Conv2DOptions(
            padding: .valid, strideWidth: 2, strideHeight: 2, activation: .relu, dilationWidth: 2, dilationHeight: 2)))
        XCTAssertEqual(model.description, "hand-built")
    }

    func testExtendedBuiltinCode() throws {
        // Codes above 127 are stored only in `builtin_code`, and the byte field contains 127.
        let ops = [TFLiteOperatorSpec(builtinCode: 150, inputs: [0], outputs: [1])]
        let tensors = [TFLiteTensorSpec(name: "x", type: 0, shape: [1]), TFLiteTensorSpec(name: "y", type: 0, shape: [1])]
        let model = try TFLiteModel.parse(
            bytes: FlatBufferWriter.file(root: tfliteModelValue(tensors: tensors, operators: ops)), path: "t.tflite")
        XCTAssertEqual(model.operators[0].builtinCode, 150)
        XCTAssertEqual(model.operators[0].name, "BUILTIN_150")
    }

    // MARK: Bad input

    private func validModelBytes() -> [UInt8] {
        FlatBufferWriter.file(root: tfliteModelValue(
            tensors: [TFLiteTensorSpec(name: "w", type: 3, shape: [4], data: uint8Bytes([1, 2, 3, 4]),
                                       scale: [1], zeroPoint: [0])],
            operators: [], inputs: []))
    }

    private func rootTablePosition(_ bytes: [UInt8]) -> Int {
        Int(bytes[0]) | Int(bytes[1]) << 8 | Int(bytes[2]) << 16 | Int(bytes[3]) << 24
    }

    func testRejectsShortFile() {
        assertMNCError(try TFLiteModel.parse(bytes: [0, 0, 0], path: "short.tflite"),
                       contains: "short.tflite: invalid TFLite file: the file is 3 bytes, too short")
    }

    func testRejectsWrongIdentifier() {
        var bytes = validModelBytes()
        bytes[7] = UInt8(ascii: "2")
        assertMNCError(try TFLiteModel.parse(bytes: bytes, path: "m.tflite"),
                       contains: "the file identifier is 'TFL2', expected 'TFL3'")
    }

    func testRejectsRootOffsetOutOfRange() {
        var bytes = validModelBytes()
        bytes[0..<4] = [0x00, 0xFF, 0xFF, 0x7F]
        assertMNCError(try TFLiteModel.parse(bytes: bytes, path: "m.tflite"),
                       contains: "root table offset: offset 2147483392 at 0 points to 2147483392, past the end of the file")
    }

    func testRejectsVtableOutsideFile() {
        var bytes = validModelBytes()
        let root = rootTablePosition(bytes)
        // A vtable offset of -1,000,000 puts the vtable a million bytes after the table.
        bytes[root..<(root + 4)] = ArraySlice(littleEndianBytes(Int32(-1_000_000)))
        assertMNCError(try TFLiteModel.parse(bytes: bytes, path: "m.tflite"),
                       contains: "Model: the table at offset \(root) has its vtable at \(root + 1_000_000), outside the file")
    }

    func testRejectsFieldOutsideTable() {
        var bytes = validModelBytes()
        let root = rootTablePosition(bytes)
        let vtable = root - Int(Int32(bitPattern: UInt32(bytes[root]) | UInt32(bytes[root + 1]) << 8
                                    | UInt32(bytes[root + 2]) << 16 | UInt32(bytes[root + 3]) << 24))
        // Shrink the declared object size to 4 bytes, so the version field at offset 4 lies outside.
        bytes[vtable + 2] = 4
        bytes[vtable + 3] = 0
        assertMNCError(try TFLiteModel.parse(bytes: bytes, path: "m.tflite"),
                       contains: "Model.version: field at offset 4 of 4 bytes lies outside its table of 4 bytes")
    }

    func testRejectsVectorLongerThanFile() {
        let root = FlatValue.table([
            (2, .tables([.table([(0, .tables([.table([(0, .rawVector(count: 1_000_000, bytes: [1, 0, 0, 0]))])]))])])),
        ])
        assertMNCError(try TFLiteModel.parse(bytes: FlatBufferWriter.file(root: root), path: "m.tflite"),
                       contains: "Model.subgraphs[0].tensors[0].shape: vector of 1000000 elements of 4 bytes")
    }

    func testRejectsTruncatedFile() {
        let bytes = validModelBytes()
        // The last object written is the data vector of the last buffer.
        assertMNCError(try TFLiteModel.parse(bytes: Array(bytes.dropLast(2)), path: "cut.tflite"),
                       contains: "cut.tflite: invalid TFLite file: Model.buffers[1].data: vector of 4 elements of 1 bytes")
    }

    func testRejectsOffsetPastEnd() {
        let root = FlatValue.table([(2, .rawOffset(0x0100_0000))])
        assertMNCError(try TFLiteModel.parse(bytes: FlatBufferWriter.file(root: root), path: "m.tflite"),
                       contains: "Model.subgraphs: offset 16777216 at")
    }

    func testRejectsMissingSubgraph() {
        assertMNCError(try TFLiteModel.parse(bytes: FlatBufferWriter.file(root: .table([(0, .u32(3))])), path: "m.tflite"),
                       contains: "Model.subgraphs: the model has no subgraph")
    }

    func testRejectsOpcodeIndexOutOfRange() {
        let subgraph = FlatValue.table([(3, .tables([.table([(0, .u32(5))])]))])
        let root = FlatValue.table([(1, .tables([.table([(0, .i8(3))])])), (2, .tables([subgraph]))])
        assertMNCError(try TFLiteModel.parse(bytes: FlatBufferWriter.file(root: root), path: "m.tflite"),
                       contains: "Model.subgraphs[0].operators[0].opcode_index: 5 is out of range (1 operator codes)")
    }

    func testRejectsTensorIndexOutOfRange() {
        let tensors = [TFLiteTensorSpec(name: "x", type: 0, shape: [1]), TFLiteTensorSpec(name: "y", type: 0, shape: [1])]
        let ops = [TFLiteOperatorSpec(builtinCode: 19, inputs: [7], outputs: [1])]
        assertMNCError(try TFLiteModel.parse(
            bytes: FlatBufferWriter.file(root: tfliteModelValue(tensors: tensors, operators: ops)), path: "m.tflite"),
                       contains: "operators[0].inputs: tensor index 7 is out of range (2 tensors)")
    }

    func testRejectsUnknownTensorType() {
        let bytes = FlatBufferWriter.file(root: tfliteModelValue(
            tensors: [TFLiteTensorSpec(name: "x", type: 42, shape: [1])], operators: [], inputs: []))
        assertMNCError(try TFLiteModel.parse(bytes: bytes, path: "m.tflite"),
                       contains: "Model.subgraphs[0].tensors[0].type: unknown tensor type 42")
    }

    func testRejectsNegativeDimension() {
        let bytes = FlatBufferWriter.file(root: tfliteModelValue(
            tensors: [TFLiteTensorSpec(name: "x", type: 0, shape: [2, -1])], operators: [], inputs: []))
        assertMNCError(try TFLiteModel.parse(bytes: bytes, path: "m.tflite"),
                       contains: "Model.subgraphs[0].tensors[0].shape: dimension -1 is negative")
    }

    func testRejectsUnsupportedTensorType() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(name: "s", type: 5, shape: [2], data: [1, 2]))
        assertMNCError(try model.values(ofTensor: 0),
                       contains: "test.tflite: tensor 0 (s) has type STRING, which cannot be converted to float32")
    }

    func testRejectsDataSizeMismatch() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(name: "w", type: 3, shape: [4], data: [1, 2, 3],
                                                           scale: [1], zeroPoint: [0]))
        assertMNCError(try model.values(ofTensor: 0),
                       contains: "tensor 0 (w) holds 3 bytes, but its shape 4 of UINT8 needs 4")
    }

    func testRejectsScaleCountMismatch() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "w", type: 3, shape: [2, 3], data: uint8Bytes([1, 2, 3, 4, 5, 6]),
            scale: [1, 2, 3], zeroPoint: [0, 0, 0], quantizedDimension: 0))
        assertMNCError(try model.values(ofTensor: 0),
                       contains: "tensor 0 (w) has 3 quantization scales, but dimension 0 of its shape 2x3 is 2")
    }

    func testRejectsZeroPointCountMismatch() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(
            name: "w", type: 3, shape: [2], data: uint8Bytes([1, 2]), scale: [1, 2], zeroPoint: [0]))
        assertMNCError(try model.values(ofTensor: 0), contains: "tensor 0 (w) has 2 quantization scales but 1 zero points")
    }

    func testRejectsTensorWithoutData() throws {
        let model = try singleTensorModel(TFLiteTensorSpec(name: "x", type: 0, shape: [1, 2]))
        assertMNCError(try model.values(ofTensor: 0), contains: "tensor 0 (x) has no constant data")
    }

    func testRejectsMissingFile() {
        assertMNCError(try TFLiteModel.load(path: "/nonexistent/model.tflite"),
                       contains: "/nonexistent/model.tflite: cannot read the file")
    }

    func testCorruptedFilesRaiseErrors() {
        var parsed = 0
        forEachCorruption(of: tinyTFLiteBytes(), mutations: 3000) { bytes in
            expectSuccessOrMNCError("corrupted TFLite file") {
                let model = try TFLiteModel.parse(bytes: bytes, path: "fuzz.tflite")
                parsed += 1
                _ = describeTFLite(model)
                for index in model.tensors.indices {
                    _ = try? model.values(ofTensor: index)
                }
                _ = try model.weightedLayers(file: "fuzz.tflite")
            }
        }
        // Most single-byte changes hit weight data and still parse; the rest must be rejected.
        XCTAssertGreaterThan(parsed, 100)
    }

    // MARK: Real models

    private func loadReal(_ name: String) throws -> TFLiteModel {
        try TFLiteModel.load(path: try sharedDataDirectory() + "/models/" + name)
    }

    func testRealModelStructure() throws {
        // (file, tensors, operators, input shape, average pool filter size)
        let cases = [
            ("mobilenet_v1_0.25_128_quant.tflite", 89, 31, [1, 128, 128, 3], 4),
            ("mobilenet_v1_0.5_160_quant.tflite", 89, 31, [1, 160, 160, 3], 5),
            ("mobilenet_v2_1.0_224_quant.tflite", 174, 66, [1, 224, 224, 3], 7),
        ]
        for (name, tensorCount, operatorCount, inputShape, poolSize) in cases {
            let model = try loadReal(name)
            XCTAssertEqual(model.tensors.count, tensorCount, name)
            XCTAssertEqual(model.operators.count, operatorCount, name)
            XCTAssertEqual(model.subgraphCount, 1, name)
            XCTAssertEqual(model.inputs.count, 1, name)
            XCTAssertEqual(model.tensors[model.inputs[0]].shape, inputShape, name)
            XCTAssertEqual(model.tensors[model.inputs[0]].type, .uint8, name)
            XCTAssertEqual(model.operators.first?.name, "CONV_2D", name)
            XCTAssertEqual(model.operators.last?.name, "SOFTMAX", name)
            XCTAssertEqual(model.operators[0].options, .conv2D(TFLiteModel.Conv2DOptions(
                padding: .same, strideWidth: 2, strideHeight: 2, activation: .relu6, dilationWidth: 1,
                dilationHeight: 1)), name)
            let pool = model.operators.first { $0.builtinCode == TFLiteModel.Builtin.averagePool2D }
            guard case .pool2D(let options)? = pool?.options else {
                XCTFail("\(name): no AVERAGE_POOL_2D with Pool2DOptions")
                continue
            }
            XCTAssertEqual(options.filterHeight, poolSize, name)
            XCTAssertEqual(options.filterWidth, poolSize, name)
            XCTAssertEqual(options.padding, .valid, name)
        }
    }

    func testRealDepthwiseOptions() throws {
        let model = try loadReal("mobilenet_v1_0.25_128_quant.tflite")
        XCTAssertEqual(model.operators[3].options, .depthwiseConv2D(TFLiteModel.DepthwiseConv2DOptions(
            padding: .same, strideWidth: 2, strideHeight: 2, depthMultiplier: 1, activation: .relu6,
            dilationWidth: 1, dilationHeight: 1)))
        XCTAssertEqual(model.operators[3].inputs, [35, 36, 18])
        XCTAssertEqual(model.tensors[36].shape, [1, 3, 3, 16])
    }

    func testRealDequantizedValues() throws {
        // Expected values computed with the `flatbuffers` Python package's reader and NumPy.
        let model = try loadReal("mobilenet_v1_0.25_128_quant.tflite")
        let stem = model.tensors[30]
        XCTAssertEqual(stem.shape, [8, 3, 3, 3])
        XCTAssertEqual(stem.type, .uint8)
        XCTAssertEqual(stem.quantization?.zeroPoint, [157])
        XCTAssertEqual(stem.quantization?.scale.first ?? 0, 0.00888241, accuracy: 1e-9)

        let weights = try model.values(ofTensor: 30)
        // OHWI index [1, 0, 1, 2] contains q = 118, and [7, 2, 1, 0] contains q = 143.
        XCTAssertEqual(weights[((1 * 3 + 0) * 3 + 1) * 3 + 2], -0.3464139858, accuracy: 1e-7)
        XCTAssertEqual(weights[((7 * 3 + 2) * 3 + 1) * 3 + 0], -0.1243537385, accuracy: 1e-7)

        let stemBias = try model.values(ofTensor: 29)
        XCTAssertEqual(stemBias.count, 8)
        XCTAssertEqual(stemBias[3], 4.57111019117, accuracy: 1e-5)

        let logitsBias = try model.values(ofTensor: 2)
        XCTAssertEqual(logitsBias.count, 1001)
        XCTAssertEqual(logitsBias[0], -0.8788511152, accuracy: 1e-6)
        XCTAssertEqual(logitsBias[1000], 0.8007686741, accuracy: 1e-6)
    }

    func testDescribeRealModel() throws {
        let model = try loadReal("mobilenet_v1_0.25_128_quant.tflite")
        let text = describeTFLite(model)
        XCTAssertTrue(text.contains("TFLite model, schema version 3, 1 subgraph(s), description 'MLIR Converted.'"))
        XCTAssertTrue(text.contains("tensors (89):"))
        XCTAssertTrue(text.contains("operators (31):"))
        XCTAssertTrue(text.contains("  0 CONV_2D: (0, 30, 29) -> (31) padding SAME stride 2x2 dilation 1x1 activation RELU6"))
        XCTAssertTrue(text.contains("  27 AVERAGE_POOL_2D: (83) -> (84) padding VALID stride 2x2 filter 4x4 activation NONE"))
        XCTAssertTrue(text.contains("  0 input: UINT8 1x128x128x3, scale 0.0078125 zero point 128"))
        XCTAssertTrue(text.contains(": UINT8 8x3x3x3, 216 bytes, scale"))
    }
}
