import Foundation
import XCTest
@testable import MNC

final class ONNXTests: XCTestCase {
    // MARK: Hand-built models

    /// Returns a model whose only content is `initializer`.
    private func modelBytes(initializer: ProtoWriter) -> [UInt8] {
        onnxModelBytes(nodes: [], initializers: [initializer], inputs: [], outputs: [])
    }

    private func onlyInitializer(_ initializer: ProtoWriter, path: String = "m.onnx") throws -> ONNXTensor {
        let model = try ONNXModel.parse(bytes: modelBytes(initializer: initializer), path: path)
        return try XCTUnwrap(model.graph.initializers.first)
    }

    func testParsesGraphStructure() throws {
        let bytes = onnxModelBytes(
            nodes: [onnxNode("Conv", ["x", "w"], ["y"], name: "conv0",
                             attributes: [onnxAttribute("pads", ints: [1, 1, 1, 1]), onnxAttribute("group", int: 1),
                                          onnxAttribute("auto_pad", string: "NOTSET"),
                                          onnxAttribute("alpha", float: 0.5)])],
            initializers: [onnxTensor("w", dims: [2, 1, 1, 1], floats: [1, 2])],
            inputs: [onnxValueInfo("x", dims: [1, 1, 4, 4])], outputs: [onnxValueInfo("y", dims: [1, 2, 4, 4])])
        let model = try ONNXModel.parse(bytes: bytes, path: "m.onnx")
        XCTAssertEqual(model.irVersion, 8)
        XCTAssertEqual(model.producerName, "hand-built")
        XCTAssertEqual(model.opsetImports, [ONNXModel.OpsetImport(domain: "", version: 17)])
        XCTAssertEqual(model.graph.name, "test")
        XCTAssertEqual(model.graph.inputs.first?.name, "x")
        XCTAssertEqual(model.graph.inputs.first?.dims, [1, 1, 4, 4])
        XCTAssertEqual(model.graph.inputs.first?.elementType, 1)
        let node = try XCTUnwrap(model.graph.nodes.first)
        XCTAssertEqual(node.opType, "Conv")
        XCTAssertEqual(node.name, "conv0")
        XCTAssertEqual(node.inputs, ["x", "w"])
        XCTAssertEqual(node.outputs, ["y"])
        XCTAssertEqual(node.attribute("pads")?.ints, [1, 1, 1, 1])
        XCTAssertEqual(node.attribute("pads")?.type, 7)
        XCTAssertEqual(node.attribute("group")?.int, 1)
        XCTAssertEqual(node.attribute("auto_pad")?.string, "NOTSET")
        XCTAssertEqual(node.attribute("alpha")?.float, 0.5)
        XCTAssertEqual(model.graph.initializers.first?.dims, [2, 1, 1, 1])
        XCTAssertEqual(try model.graph.initializers.first?.floatValues(), [1, 2])
    }

    func testFloatDataPackedAndUnpacked() throws {
        var packed = ProtoWriter()
        packed.packedInts(1, [3])
        packed.int(2, 1)
        packed.string(8, "packed")
        packed.packedFloats(4, [1.5, -2, 0.25])
        XCTAssertEqual(try onlyInitializer(packed).floatValues(), [1.5, -2, 0.25])

        var unpacked = ProtoWriter()
        unpacked.int(1, 3)
        unpacked.int(2, 1)
        unpacked.string(8, "unpacked")
        for value: Float in [1.5, -2, 0.25] { unpacked.float(4, value) }
        let tensor = try onlyInitializer(unpacked)
        XCTAssertEqual(tensor.dims, [3])
        XCTAssertEqual(try tensor.floatValues(), [1.5, -2, 0.25])
    }

    func testFloat16InInt32Data() throws {
        var tensor = ProtoWriter()
        tensor.packedInts(1, [3])
        tensor.int(2, 10)
        tensor.string(8, "half")
        // binary16 bits of 1.0, -2.0 and 0.5.
        tensor.packedInts(5, [0x3C00, 0xC000, 0x3800])
        XCTAssertEqual(try onlyInitializer(tensor).floatValues(), [1, -2, 0.5])
    }

    func testInt64AndRawInt8() throws {
        var int64s = ProtoWriter()
        int64s.packedInts(1, [2])
        int64s.int(2, 7)
        int64s.string(8, "shape")
        int64s.packedInts(7, [-1, 1280])
        XCTAssertEqual(try onlyInitializer(int64s).floatValues(), [-1, 1280])

        var int8s = ProtoWriter()
        int8s.packedInts(1, [3])
        int8s.int(2, 3)
        int8s.string(8, "q")
        int8s.data(9, [0xFF, 0x7F, 0x80])
        XCTAssertEqual(try onlyInitializer(int8s).floatValues(), [-1, 127, -128])
    }

    func testConstantsThroughIdentityAndConstantNodes() throws {
        var constantValue = ProtoWriter()
        constantValue.string(1, "value")
        constantValue.message(5, onnxTensor("", dims: [], floats: [6]))
        constantValue.int(20, 4)
        let bytes = onnxModelBytes(
            nodes: [onnxNode("Identity", ["w"], ["w_alias"]),
                    onnxNode("Constant", [], ["six"], attributes: [constantValue]),
                    onnxNode("Constant", [], ["half"], attributes: [onnxAttribute("value_float", float: 0.5)])],
            initializers: [onnxTensor("w", dims: [2], floats: [3, 4])], inputs: [], outputs: [])
        let model = try ONNXModel.parse(bytes: bytes, path: "m.onnx")
        let constants = model.graph.constantTensors(file: "m.onnx")
        XCTAssertEqual(try constants["w_alias"]?.floatValues(), [3, 4])
        XCTAssertEqual(try constants["six"]?.floatValues(), [6])
        XCTAssertEqual(try constants["half"]?.floatValues(), [0.5])
    }

    // MARK: External data

    private func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("mnc-onnx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        return directory
    }

    private func externalTensor(location: String, offset: String? = nil, length: String? = nil, count: Int64 = 2) -> ProtoWriter {
        var tensor = ProtoWriter()
        tensor.packedInts(1, [count])
        tensor.int(2, 1)
        tensor.string(8, "w")
        for (key, value) in [("location", location), ("offset", offset), ("length", length)] {
            guard let value else { continue }
            var entry = ProtoWriter()
            entry.string(1, key)
            entry.string(2, value)
            tensor.message(13, entry)
        }
        tensor.int(14, 1)
        return tensor
    }

    func testExternalDataReadsRange() throws {
        let directory = try temporaryDirectory()
        try Data(float32Bytes([9, 1.5, -3, 9])).write(to: directory.appendingPathComponent("weights.bin"))
        let modelPath = directory.appendingPathComponent("model.onnx").path
        let tensor = try onlyInitializer(externalTensor(location: "weights.bin", offset: "4", length: "8"), path: modelPath)
        XCTAssertTrue(tensor.isExternal)
        XCTAssertEqual(try tensor.floatValues(), [1.5, -3])
    }

    func testExternalDataInSubdirectory() throws {
        let directory = try temporaryDirectory()
        let data = directory.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        try Data(float32Bytes([2, 4])).write(to: data.appendingPathComponent("w.bin"))
        let modelPath = directory.appendingPathComponent("model.onnx").path
        let tensor = try onlyInitializer(externalTensor(location: "data/../data/w.bin"), path: modelPath)
        XCTAssertEqual(try tensor.floatValues(), [2, 4])
    }

    func testRejectsExternalPathOutsideDirectory() throws {
        let directory = try temporaryDirectory()
        let modelPath = directory.appendingPathComponent("model.onnx").path
        assertMNCError(try onlyInitializer(externalTensor(location: "../secret.bin"), path: modelPath),
                       contains: "tensor 'w': external data location '../secret.bin' is outside the model's directory")
    }

    func testRejectsAbsoluteExternalPath() throws {
        let directory = try temporaryDirectory()
        let modelPath = directory.appendingPathComponent("model.onnx").path
        assertMNCError(try onlyInitializer(externalTensor(location: "/etc/hostname"), path: modelPath),
                       contains: "external data location '/etc/hostname' is an absolute path")
    }

    func testRejectsSymlinkOutOfDirectory() throws {
        let directory = try temporaryDirectory()
        let outside = try temporaryDirectory()
        try Data(float32Bytes([1, 2])).write(to: outside.appendingPathComponent("w.bin"))
        try FileManager.default.createSymbolicLink(at: directory.appendingPathComponent("link.bin"),
                                                   withDestinationURL: outside.appendingPathComponent("w.bin"))
        let modelPath = directory.appendingPathComponent("model.onnx").path
        assertMNCError(try onlyInitializer(externalTensor(location: "link.bin"), path: modelPath),
                       contains: "external data location 'link.bin' is outside the model's directory")
    }

    func testRejectsExternalRangePastEnd() throws {
        let directory = try temporaryDirectory()
        try Data(float32Bytes([1, 2])).write(to: directory.appendingPathComponent("w.bin"))
        let modelPath = directory.appendingPathComponent("model.onnx").path
        let tensor = try onlyInitializer(externalTensor(location: "w.bin", offset: "4", length: "8"), path: modelPath)
        assertMNCError(try tensor.floatValues(),
                       contains: "tensor 'w': external data 'w.bin' range 4+8 extends past the end of the file (8 bytes)")
    }

    func testRejectsExternalLengthMismatch() throws {
        let directory = try temporaryDirectory()
        try Data(float32Bytes([1, 2, 3])).write(to: directory.appendingPathComponent("w.bin"))
        let modelPath = directory.appendingPathComponent("model.onnx").path
        let tensor = try onlyInitializer(externalTensor(location: "w.bin"), path: modelPath)
        assertMNCError(try tensor.floatValues(),
                       contains: "tensor 'w' has 12 bytes of external data 'w.bin', but its shape 2 of FLOAT needs 8")
    }

    func testRejectsInvalidExternalOffset() throws {
        let directory = try temporaryDirectory()
        let modelPath = directory.appendingPathComponent("model.onnx").path
        assertMNCError(try onlyInitializer(externalTensor(location: "w.bin", offset: "-4"), path: modelPath),
                       contains: "external data offset '-4' is not a non-negative integer")
    }

    // MARK: Bad input

    func testRejectsUnendingVarint() {
        // A key of eleven continuation bytes.
        let bytes = [UInt8](repeating: 0xFF, count: 11)
        assertMNCError(try ONNXModel.parse(bytes: bytes, path: "v.onnx"),
                       contains: "v.onnx: invalid ONNX file: ModelProto: field key: the varint at offset 0 does not end within 10 bytes")
    }

    func testRejectsVarintOverflow() {
        let bytes: [UInt8] = [0x08] + [UInt8](repeating: 0xFF, count: 9) + [0x02]
        assertMNCError(try ONNXModel.parse(bytes: bytes, path: "v.onnx"),
                       contains: "ModelProto: field 1: the varint at offset 1 does not fit in 64 bits")
    }

    func testRejectsTruncatedVarint() {
        assertMNCError(try ONNXModel.parse(bytes: [0x08, 0x80], path: "v.onnx"),
                       contains: "ModelProto: field 1: the varint at offset 1 is truncated")
    }

    func testRejectsLengthLargerThanFile() {
        // Field 7 (graph), wire type 2, declaring 1000 bytes.
        let bytes: [UInt8] = [0x3A, 0xE8, 0x07, 0x00]
        assertMNCError(try ONNXModel.parse(bytes: bytes, path: "l.onnx"),
                       contains: "ModelProto: field 7 at offset 0 declares 1000 bytes, but only 1 remain in its message")
    }

    func testRejectsTruncatedRealModel() throws {
        let path = try sharedDataDirectory() + "/onnx/mobilenet_v2_0.5_160_c10.onnx"
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        assertMNCError(try ONNXModel.parse(bytes: Array(bytes.prefix(bytes.count / 2)), path: "half.onnx"),
                       contains: "half.onnx: invalid ONNX file: ModelProto: field 7 at offset")
    }

    func testRejectsDeepNesting() {
        // Each level is graph → node → attribute → graph, three messages deeper.
        var graph = ProtoWriter()
        graph.string(2, "innermost")
        for _ in 0..<30 {
            var attribute = ProtoWriter()
            attribute.string(1, "body")
            attribute.message(6, graph)
            attribute.int(20, 5)
            var node = ProtoWriter()
            node.string(4, "Loop")
            node.message(5, attribute)
            graph = ProtoWriter()
            graph.message(1, node)
        }
        var model = ProtoWriter()
        model.message(7, graph)
        assertMNCError(try ONNXModel.parse(bytes: model.bytes, path: "deep.onnx"),
                       contains: "messages are nested deeper than 64 levels")
    }

    func testAcceptsModerateNesting() throws {
        var graph = ProtoWriter()
        graph.string(2, "innermost")
        for _ in 0..<3 {
            var attribute = ProtoWriter()
            attribute.string(1, "body")
            attribute.message(6, graph)
            attribute.int(20, 5)
            var node = ProtoWriter()
            node.string(4, "Loop")
            node.message(5, attribute)
            graph = ProtoWriter()
            graph.message(1, node)
        }
        var model = ProtoWriter()
        model.message(7, graph)
        let parsed = try ONNXModel.parse(bytes: model.bytes, path: "nested.onnx")
        XCTAssertEqual(parsed.graph.nodes.first?.attribute("body")?.graphs.count, 1)
    }

    func testRejectsGroupWireType() {
        // Field 1 with wire type 3 (start group).
        assertMNCError(try ONNXModel.parse(bytes: [0x0B], path: "g.onnx"),
                       contains: "ModelProto: field 1 at offset 0 has wire type 3, which is not valid")
    }

    func testRejectsWrongWireTypeForGraph() {
        // Field 7 (graph) as a varint.
        assertMNCError(try ONNXModel.parse(bytes: [0x38, 0x01], path: "w.onnx"),
                       contains: "ModelProto.graph: wire type 0, expected 2")
    }

    func testRejectsMissingGraph() {
        var model = ProtoWriter()
        model.int(1, 8)
        assertMNCError(try ONNXModel.parse(bytes: model.bytes, path: "empty.onnx"),
                       contains: "empty.onnx: invalid ONNX file: ModelProto has no graph (field 7)")
    }

    func testRejectsUnsupportedDataType() throws {
        var tensor = ProtoWriter()
        tensor.packedInts(1, [1])
        tensor.int(2, 8)
        tensor.string(8, "names")
        let parsed = try onlyInitializer(tensor)
        assertMNCError(try parsed.floatValues(),
                       contains: "m.onnx: tensor 'names' has data type STRING, which cannot be converted to float32")
    }

    func testRejectsRawSizeMismatch() throws {
        var tensor = onnxTensor("w", dims: [3], floats: [1, 2])
        tensor.int(2, 1)
        let parsed = try onlyInitializer(tensor)
        assertMNCError(try parsed.floatValues(),
                       contains: "tensor 'w' has 8 bytes of raw_data, but its shape 3 of FLOAT needs 12")
    }

    func testRejectsDataFieldOfWrongType() throws {
        var tensor = ProtoWriter()
        tensor.packedInts(1, [1])
        tensor.int(2, 7)
        tensor.string(8, "ids")
        tensor.packedFloats(4, [1])
        assertMNCError(try onlyInitializer(tensor).floatValues(),
                       contains: "tensor 'ids' stores its values in float_data, which does not hold data type INT64")
    }

    func testRejectsNegativeDimension() {
        var tensor = ProtoWriter()
        tensor.packedInts(1, [2, -3])
        tensor.int(2, 1)
        tensor.string(8, "w")
        assertMNCError(try onlyInitializer(tensor), contains: "tensor 'w' has an invalid dimension in [2, -3]")
    }

    func testRejectsMissingFile() {
        assertMNCError(try ONNXModel.load(path: "/nonexistent/model.onnx"),
                       contains: "/nonexistent/model.onnx: cannot read the file")
    }

    func testCorruptedFilesRaiseErrors() {
        var parsed = 0
        forEachCorruption(of: squeezeExciteONNXBytes(), mutations: 3000) { bytes in
            expectSuccessOrMNCError("corrupted ONNX file") {
                let model = try ONNXModel.parse(bytes: bytes, path: "fuzz.onnx")
                parsed += 1
                _ = describeONNX(model)
                for tensor in model.graph.initializers {
                    _ = try? tensor.floatValues()
                }
                _ = try model.weightedLayers(file: "fuzz.onnx")
            }
        }
        XCTAssertGreaterThan(parsed, 100)
    }

    // MARK: Real models

    func testRealModelStructure() throws {
        let directory = try sharedDataDirectory() + "/onnx/"
        // (file, nodes, initializers, Conv nodes, input resolution, classes)
        let cases = [
            ("mobilenet_v2_1.0_224.onnx", 170, 106, 52, 224, 1000),
            ("mobilenet_v2_0.5_160_c10.onnx", 170, 106, 52, 160, 10),
            ("mobilenet_v3_large_1.0_224.onnx", 147, 121, 62, 224, 1000),
            ("mobilenet_v3_small_1.0_224.onnx", 127, 103, 52, 224, 1000),
        ]
        for (name, nodeCount, initializerCount, convCount, resolution, classes) in cases {
            let model = try ONNXModel.load(path: directory + name)
            XCTAssertEqual(model.irVersion, 8, name)
            XCTAssertEqual(model.opsetImports.first?.version, 17, name)
            XCTAssertEqual(model.producerName, "pytorch", name)
            XCTAssertEqual(model.graph.nodes.count, nodeCount, name)
            XCTAssertEqual(model.graph.initializers.count, initializerCount, name)
            XCTAssertEqual(model.graph.nodes.filter { $0.opType == "Conv" }.count, convCount, name)
            XCTAssertEqual(model.graph.inputs.first?.dims, [1, 3, Int64(resolution), Int64(resolution)], name)
            XCTAssertEqual(model.graph.outputs.first?.name, "logits", name)

            let firstConv = try XCTUnwrap(model.graph.nodes.first { $0.opType == "Conv" })
            XCTAssertEqual(firstConv.attribute("strides")?.ints, [2, 2], name)
            XCTAssertEqual(firstConv.attribute("pads")?.ints, [1, 1, 1, 1], name)
            XCTAssertEqual(firstConv.attribute("kernel_shape")?.ints, [3, 3], name)

            let lastGemm = try XCTUnwrap(model.graph.nodes.last { $0.opType == "Gemm" })
            XCTAssertEqual(lastGemm.attribute("transB")?.int, 1, name)
            let constants = model.graph.constantTensors(file: name)
            let classifier = try XCTUnwrap(constants[lastGemm.inputs[1]])
            XCTAssertEqual(classifier.dims.first, classes, name)
            XCTAssertEqual(try classifier.floatValues().count, classifier.dims.reduce(1, *), name)
        }
    }

    func testRealClipBoundsAreConstants() throws {
        let model = try ONNXModel.load(path: try sharedDataDirectory() + "/onnx/mobilenet_v2_0.5_160_c10.onnx")
        let constants = model.graph.constantTensors(file: model.path)
        let clip = try XCTUnwrap(model.graph.nodes.first { $0.opType == "Clip" })
        XCTAssertEqual(try constants[clip.inputs[1]]?.floatValues(), [0])
        XCTAssertEqual(try constants[clip.inputs[2]]?.floatValues(), [6])
    }

    func testRealIdentityAliases() throws {
        let model = try ONNXModel.load(path: try sharedDataDirectory() + "/onnx/mobilenet_v3_small_1.0_224.onnx")
        let constants = model.graph.constantTensors(file: model.path)
        // The exporter stores equal SE biases once and aliases the others through Identity nodes.
        let alias = try XCTUnwrap(constants["features.6.block.2.fc2.bias"])
        let original = try XCTUnwrap(constants["features.5.block.2.fc2.bias"])
        XCTAssertEqual(try alias.floatValues(), try original.floatValues())
    }

    func testDescribeRealModel() throws {
        let model = try ONNXModel.load(path: try sharedDataDirectory() + "/onnx/mobilenet_v2_0.5_160_c10.onnx")
        let text = describeONNX(model)
        XCTAssertTrue(text.contains("ONNX model, IR version 8, opset ai.onnx 17"))
        XCTAssertTrue(text.contains("  input: FLOAT 1x3x160x160"))
        XCTAssertTrue(text.contains("initializers (106):"))
        XCTAssertTrue(text.contains("  classifier.1.weight: FLOAT 10x1280"))
        XCTAssertTrue(text.contains("nodes (170):"))
        XCTAssertTrue(text.contains("  0 Conv /features/features.0/features.0.0/Conv: (input, onnx::Conv_538, onnx::Conv_539) -> (/features/features.0/features.0.0/Conv_output_0) dilations=[1, 1] group=1 kernel_shape=[3, 3] pads=[1, 1, 1, 1] strides=[2, 2]"))
    }
}
