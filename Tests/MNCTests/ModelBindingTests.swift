import Foundation
import XCTest
@testable import MNC

final class ModelBindingTests: XCTestCase {
    private let zero = Padding(top: 0, left: 0, bottom: 0, right: 0)

    // MARK: Graph rewrite

    func testRemoveNodesRenumbersInputs() {
        var builder = GraphBuilder()
        let x = builder.input(channels: 2, height: 4, width: 4)
        let conv = builder.conv(x, out: 2, kernel: 1, padding: zero, name: "c", layer: "l")
        let bn = builder.batchNorm(conv, name: "bn", layer: "l")
        let relu = builder.activation(bn, .relu, name: "r", layer: "l")
        _ = builder.sum(relu, x, name: "s", layer: "l")
        var graph = builder.graph(name: "g")

        graph.replaceUses(of: bn, with: conv)
        XCTAssertEqual(graph.users(of: conv), [bn, relu])
        XCTAssertEqual(graph.users(of: bn), [])
        graph.removeNode(bn)

        XCTAssertEqual(graph.nodes.map(\.name), ["input", "c", "r", "s"])
        XCTAssertEqual(graph.nodes[2].inputs, [1])
        XCTAssertEqual(graph.nodes[3].inputs, [2, 0])
        XCTAssertEqual(graph.output, 3)
    }

    func testReplaceUsesMovesOutput() {
        var builder = GraphBuilder()
        let x = builder.input(channels: 2, height: 1, width: 1)
        let flat = builder.flatten(x, name: "f", layer: "l")
        let drop = builder.dropout(flat, probability: 0.5, name: "d", layer: "l")
        var graph = builder.graph(name: "g")
        XCTAssertEqual(graph.output, drop)
        graph.replaceUses(of: drop, with: flat)
        graph.removeNodes([drop])
        XCTAssertEqual(graph.output, flat)
        XCTAssertEqual(graph.nodes.count, 2)
    }

    // MARK: TFLite, hand-built

    private func tinyTFLite(convBias: Bool = true) throws -> TFLiteModel {
        try TFLiteModel.parse(bytes: tinyTFLiteBytes(convBias: convBias), path: "tiny.tflite")
    }

    /// Returns the graph that `tinyTFLite` implements, varied as the mismatch tests need.
    private func tinyGraph(stride: Int = 2, kernel: Int = 3, convOut: Int = 3, convPadding: Padding? = nil,
                           convActivation: Activation = .relu6, depthwise: Bool = true, linear: Bool = true,
                           linearBias: Bool = true, extraLinear: Bool = false) -> Graph {
        var builder = GraphBuilder()
        var x = builder.input(channels: 2, height: 4, width: 4)
        let padding = convPadding ?? tensorFlowSamePadding(size: 4, kernel: kernel, stride: stride)
        x = builder.convBN(x, out: convOut, kernel: kernel, stride: stride, padding: padding,
                           activation: convActivation, convName: "stem.conv", bnName: "stem.bn", layer: "stem")
        let channels = builder.nodes[x].shape[1]
        let size = builder.nodes[x].shape[2]
        x = builder.convBN(x, out: channels, kernel: 3, padding: tensorFlowSamePadding(size: size, kernel: 3, stride: 1),
                           groups: depthwise ? channels : 1, activation: .relu6, convName: "dw.conv", bnName: "dw.bn",
                           layer: "dw")
        x = builder.globalAveragePool(x, name: "pool", layer: "head")
        x = builder.flatten(x, name: "flatten", layer: "head")
        if linear {
            x = builder.linear(x, out: 2, bias: linearBias, name: "fc", layer: "head")
        }
        if extraLinear {
            _ = builder.linear(x, out: 2, name: "fc2", layer: "head2")
        }
        return builder.graph(name: "tiny")
    }

    func testTFLiteBindsAndFoldsBatchNorm() throws {
        let bound = try bindTFLite(try tinyTFLite(), to: tinyGraph(), file: "tiny.tflite")

        XCTAssertEqual(bound.nodes.map(\.name), ["input", "stem.conv", "stem.bn.act", "dw.conv", "dw.bn.act", "pool",
                                                 "flatten", "fc"])
        XCTAssertEqual(bound.nodes[2].inputs, [1])
        XCTAssertEqual(bound.nodes[4].inputs, [3])
        XCTAssertEqual(bound.output, 7)
        guard case .conv2d(let stem) = bound.nodes[1].op else { return XCTFail("node 1 is not a convolution") }
        XCTAssertTrue(stem.hasBias)
        XCTAssertEqual(bound.nodes[1].parameter("bias")?.key, "stem.conv.bias")
        XCTAssertEqual(Set(bound.constants.keys),
                       ["stem.conv.weight", "stem.conv.bias", "dw.conv.weight", "dw.conv.bias", "fc.weight", "fc.bias"])
    }

    func testTFLiteConvolutionLayout() throws {
        let bound = try bindTFLite(try tinyTFLite(), to: tinyGraph(), file: "tiny.tflite")
        let weight = try XCTUnwrap(bound.constants["stem.conv.weight"])
        XCTAssertEqual(weight.shape, [3, 2, 3, 3])
        // Graph [o, i, y, x] is file OHWI [o, y, x, i], whose value is its flat index.
        for (o, i, y, x) in [(0, 0, 0, 0), (0, 1, 0, 0), (1, 0, 2, 1), (2, 1, 1, 2)] {
            XCTAssertEqual(weight.data[((o * 2 + i) * 3 + y) * 3 + x], Float(((o * 3 + y) * 3 + x) * 2 + i),
                           "element [\(o), \(i), \(y), \(x)]")
        }
        XCTAssertEqual(bound.constants["stem.conv.bias"]?.data, [0.5, -0.5, 1])
        XCTAssertEqual(bound.constants["stem.conv.bias"]?.shape, [3])
    }

    func testTFLiteDepthwiseLayout() throws {
        let bound = try bindTFLite(try tinyTFLite(), to: tinyGraph(), file: "tiny.tflite")
        let weight = try XCTUnwrap(bound.constants["dw.conv.weight"])
        XCTAssertEqual(weight.shape, [3, 1, 3, 3])
        // Graph [c, 0, y, x] is file [0, y, x, c] = 100 + (y * 3 + x) * 3 + c.
        for (c, y, x) in [(0, 0, 0), (1, 0, 0), (2, 2, 1), (1, 1, 2)] {
            XCTAssertEqual(weight.data[(c * 3 + y) * 3 + x], Float(100 + (y * 3 + x) * 3 + c), "element [\(c), 0, \(y), \(x)]")
        }
    }

    func testTFLiteQuantizedLinear() throws {
        let bound = try bindTFLite(try tinyTFLite(), to: tinyGraph(), file: "tiny.tflite")
        // (q - 10) * 0.5 and q * 0.25.
        XCTAssertEqual(bound.constants["fc.weight"]?.data, [0, 1, 2, -0.5, -1, -1.5])
        XCTAssertEqual(bound.constants["fc.weight"]?.shape, [2, 3])
        XCTAssertEqual(bound.constants["fc.bias"]?.data, [1, -2])
    }

    func testTFLiteStrideMismatch() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(stride: 1), file: "tiny.tflite"),
                       contains: "tiny.tflite: layer stem expects stride 1, operator 0 (CONV_2D) in the model has stride 2")
    }

    func testTFLiteKernelMismatch() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(kernel: 1), file: "tiny.tflite"),
                       contains: "layer stem expects kernel 1x1, operator 0 (CONV_2D) in the model has kernel 3x3")
    }

    func testTFLiteChannelMismatch() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(convOut: 4), file: "tiny.tflite"),
                       contains: "layer stem expects 4 output channels, operator 0 (CONV_2D) in the model has 3")
    }

    func testTFLiteActivationMismatch() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(convActivation: .relu), file: "tiny.tflite"),
                       contains: "layer stem expects activation relu, operator 0 (CONV_2D) in the model has activation relu6")
        assertMNCError(try bindTFLite(model, to: tinyGraph(convActivation: .identity), file: "tiny.tflite"),
                       contains: "layer stem expects activation identity, operator 0 (CONV_2D) in the model has activation relu6")
    }

    func testTFLitePaddingMismatch() throws {
        let model = try tinyTFLite()
        let symmetric = Padding(top: 1, left: 1, bottom: 1, right: 1)
        assertMNCError(try bindTFLite(model, to: tinyGraph(convPadding: symmetric), file: "tiny.tflite"),
                       contains: "layer stem expects padding 1, operator 0 (CONV_2D) in the model has padding SAME, which is (0,0,1,1) for a 4x4 input")
    }

    func testTFLiteKindMismatch() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(depthwise: false), file: "tiny.tflite"),
                       contains: "layer dw expects a convolution, operator 1 (DEPTHWISE_CONV_2D) in the model is a depthwise convolution")
    }

    func testTFLiteGraphHasMoreLayers() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(extraLinear: true), file: "tiny.tflite"),
                       contains: "tiny.tflite: layer head2 has no matching operator: the model has only 3 convolution and fully-connected operators")
    }

    func testTFLiteModelHasMoreOperators() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(linear: false), file: "tiny.tflite"),
                       contains: "tiny.tflite: operator 3 (FULLY_CONNECTED) in the model has no matching layer")
    }

    func testTFLiteUnexpectedBias() throws {
        let model = try tinyTFLite()
        assertMNCError(try bindTFLite(model, to: tinyGraph(linearBias: false), file: "tiny.tflite"),
                       contains: "layer head has no bias, but operator 3 (FULLY_CONNECTED) in the model has a nonzero bias")
    }

    func testTFLiteBatchNormWithoutBias() throws {
        let model = try tinyTFLite(convBias: false)
        assertMNCError(try bindTFLite(model, to: tinyGraph(), file: "tiny.tflite"),
                       contains: "layer stem has a BatchNorm, but operator 0 (CONV_2D) in the model has neither a bias that holds the folded BatchNorm nor a BatchNormalization")
    }

    func testTFLiteRejectsSqueezeExcite() throws {
        var builder = GraphBuilder()
        let x = builder.input(channels: 4, height: 2, width: 2)
        _ = builder.squeezeExcite(x, squeeze: 2, activation: .relu, gate: .hardsigmoid, name: "se", layer: "block")
        assertMNCError(try bindTFLite(try tinyTFLite(), to: builder.graph(name: "se"), file: "tiny.tflite"),
                       contains: "layer block is a squeeze-excitation block, which TFLite weights cannot be bound to")
    }

    // MARK: ONNX, hand-built

    /// Conv 3×3 (2 → 3, pads 1) → BatchNormalization (ε 1e-3) → Clip(0, 6) → GlobalAveragePool
    /// → Flatten → Gemm (transB 0, alpha 2, beta 0.5).
    private func onnxConvBatchNormGemm(gemmWeights: [Float] = [1, 2, 3, 4, 5, 6]) throws -> ONNXModel {
        let convWeight = (0..<54).map { Float($0) }
        let bytes = onnxModelBytes(
            nodes: [
                onnxNode("Conv", ["x", "w"], ["c"], name: "conv0",
                         attributes: [onnxAttribute("pads", ints: [1, 1, 1, 1]), onnxAttribute("strides", ints: [1, 1]),
                                      onnxAttribute("kernel_shape", ints: [3, 3])]),
                onnxNode("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name: "bn0",
                         attributes: [onnxAttribute("epsilon", float: 1e-3)]),
                onnxNode("Constant", [], ["lo"], attributes: [onnxAttribute("value_float", float: 0)]),
                onnxNode("Constant", [], ["hi"], attributes: [onnxAttribute("value_float", float: 6)]),
                onnxNode("Clip", ["n", "lo", "hi"], ["r"]),
                onnxNode("GlobalAveragePool", ["r"], ["p"]),
                onnxNode("Flatten", ["p"], ["f"]),
                onnxNode("Gemm", ["f", "fw", "fb"], ["y"], name: "fc",
                         attributes: [onnxAttribute("alpha", float: 2), onnxAttribute("beta", float: 0.5)]),
            ],
            initializers: [
                onnxTensor("w", dims: [3, 2, 3, 3], floats: convWeight),
                onnxTensor("g", dims: [3], floats: [1, 2, 3]), onnxTensor("b", dims: [3], floats: [4, 5, 6]),
                onnxTensor("m", dims: [3], floats: [7, 8, 9]), onnxTensor("v", dims: [3], floats: [10, 11, 12]),
                // Gemm B without transB is [in, out] = [3, 2].
                onnxTensor("fw", dims: [3, 2], floats: gemmWeights),
                onnxTensor("fb", dims: [2], floats: [8, -4]),
            ],
            inputs: [onnxValueInfo("x", dims: [1, 2, 4, 4])], outputs: [onnxValueInfo("y", dims: [1, 2])])
        return try ONNXModel.parse(bytes: bytes, path: "cbg.onnx")
    }

    private func convBatchNormLinearGraph(padding: Int = 1, epsilon: Float = 1e-3, activation: Activation = .relu6) -> Graph {
        var builder = GraphBuilder()
        var x = builder.input(channels: 2, height: 4, width: 4)
        x = builder.conv(x, out: 3, kernel: 3, padding: Padding(top: padding, left: padding, bottom: padding, right: padding),
                         name: "features.0.0", layer: "features.0")
        x = builder.batchNorm(x, name: "features.0.1", layer: "features.0", epsilon: epsilon)
        x = builder.activation(x, activation, name: "features.0.2", layer: "features.0")
        x = builder.globalAveragePool(x, name: "avgpool", layer: "classifier")
        x = builder.flatten(x, name: "flatten", layer: "classifier")
        _ = builder.linear(x, out: 2, name: "classifier.1", layer: "classifier")
        return builder.graph(name: "cbg")
    }

    func testONNXBindsBatchNormalization() throws {
        let graph = convBatchNormLinearGraph()
        let bound = try bindONNX(try onnxConvBatchNormGemm(), to: graph, file: "cbg.onnx")
        XCTAssertEqual(bound.nodes.count, graph.nodes.count)
        XCTAssertEqual(bound.constants["features.0.0.weight"]?.data, (0..<54).map { Float($0) })
        XCTAssertEqual(bound.constants["features.0.1.weight"]?.data, [1, 2, 3])
        XCTAssertEqual(bound.constants["features.0.1.bias"]?.data, [4, 5, 6])
        XCTAssertEqual(bound.constants["features.0.1.running_mean"]?.data, [7, 8, 9])
        XCTAssertEqual(bound.constants["features.0.1.running_var"]?.data, [10, 11, 12])
    }

    func testONNXGemmTransposesAndScales() throws {
        let bound = try bindONNX(try onnxConvBatchNormGemm(), to: convBatchNormLinearGraph(), file: "cbg.onnx")
        // B = [[1, 2], [3, 4], [5, 6]] as [in, out]; weight = alpha × Bᵀ; bias = beta × C.
        XCTAssertEqual(bound.constants["classifier.1.weight"]?.data, [2, 6, 10, 4, 8, 12])
        XCTAssertEqual(bound.constants["classifier.1.weight"]?.shape, [2, 3])
        XCTAssertEqual(bound.constants["classifier.1.bias"]?.data, [4, -2])
    }

    /// An infinite weight is rejected with its tensor key and its index in the bound tensor
    /// (after the Gemm's transpose: B's row 2, column 0 is weight 2 of output 0).
    func testONNXRejectsNonFiniteWeight() throws {
        let model = try onnxConvBatchNormGemm(gemmWeights: [1, 2, 3, 4, .infinity, 6])
        assertMNCError(try bindONNX(model, to: convBatchNormLinearGraph(), file: "cbg.onnx"),
                       contains: "cbg.onnx: tensor 'classifier.1.weight' has a non-finite value (inf) at index 2: expected finite float32 weights")
    }

    func testONNXPaddingMismatch() throws {
        let model = try onnxConvBatchNormGemm()
        assertMNCError(try bindONNX(model, to: convBatchNormLinearGraph(padding: 0), file: "cbg.onnx"),
                       contains: "cbg.onnx: layer features.0 expects padding 0, node 0 (Conv conv0) in the model has padding 1")
    }

    func testONNXEpsilonMismatch() throws {
        let model = try onnxConvBatchNormGemm()
        assertMNCError(try bindONNX(model, to: convBatchNormLinearGraph(epsilon: 1e-5), file: "cbg.onnx"),
                       contains: "layer features.0 expects BatchNorm epsilon 1e-05, node 1 (BatchNormalization bn0) in the model has epsilon 0.001")
    }

    func testONNXClipActivationMismatch() throws {
        let model = try onnxConvBatchNormGemm()
        assertMNCError(try bindONNX(model, to: convBatchNormLinearGraph(activation: .hardswish), file: "cbg.onnx"),
                       contains: "layer features.0 expects activation hardswish, node 0 (Conv conv0) in the model has activation relu6")
    }

    private func onnxSqueezeExcite() throws -> ONNXModel {
        try ONNXModel.parse(bytes: squeezeExciteONNXBytes(), path: "se.onnx")
    }

    private func squeezeExciteGraph(gate: Activation = .hardsigmoid, squeeze: Int = 2) -> Graph {
        var builder = GraphBuilder()
        var x = builder.input(channels: 2, height: 2, width: 2)
        x = builder.convBN(x, out: 4, kernel: 1, padding: zero, activation: .hardswish,
                           convName: "block.0.0", bnName: "block.0.1", layer: "block")
        x = builder.squeezeExcite(x, squeeze: squeeze, activation: .relu, gate: gate, name: "block.1", layer: "block")
        x = builder.convBN(x, out: 3, kernel: 1, padding: zero, activation: .identity,
                           convName: "block.2.0", bnName: "block.2.1", layer: "block")
        x = builder.globalAveragePool(x, name: "avgpool", layer: "classifier")
        x = builder.flatten(x, name: "flatten", layer: "classifier")
        _ = builder.linear(x, out: 2, name: "classifier.0", layer: "classifier")
        return builder.graph(name: "se")
    }

    func testONNXBindsSqueezeExcite() throws {
        let bound = try bindONNX(try onnxSqueezeExcite(), to: squeezeExciteGraph(), file: "se.onnx")
        XCTAssertEqual(bound.nodes.count, 8)
        XCTAssertEqual(bound.constants["block.1.fc1.weight"]?.data, (0..<8).map { Float(10 + $0) })
        XCTAssertEqual(bound.constants["block.1.fc1.weight"]?.shape, [2, 4, 1, 1])
        XCTAssertEqual(bound.constants["block.1.fc1.bias"]?.data, [-1, -2])
        XCTAssertEqual(bound.constants["block.1.fc2.weight"]?.shape, [4, 2, 1, 1])
        XCTAssertEqual(bound.constants["block.1.fc2.bias"]?.data, [5, 6, 7, 8])
        XCTAssertEqual(bound.constants["block.0.0.bias"]?.data, [1, 2, 3, 4])
        XCTAssertEqual(bound.constants["block.2.0.bias"]?.data, [0, 0, 1])
    }

    func testONNXMatMulAddBindsLinear() throws {
        let bound = try bindONNX(try onnxSqueezeExcite(), to: squeezeExciteGraph(), file: "se.onnx")
        XCTAssertEqual(bound.constants["classifier.0.weight"]?.data, [1, 3, 5, 2, 4, 6])
        XCTAssertEqual(bound.constants["classifier.0.bias"]?.data, [0.5, -0.5])
    }

    func testONNXSqueezeExciteGateMismatch() throws {
        let model = try onnxSqueezeExcite()
        assertMNCError(try bindONNX(model, to: squeezeExciteGraph(gate: .hardsigmoidLinear), file: "se.onnx"),
                       contains: "layer block (squeeze-excitation fc2) expects activation hardsigmoid_linear, node 5 (Conv fc2) in the model has activation hardsigmoid")
    }

    func testONNXSqueezeExciteChannelMismatch() throws {
        let model = try onnxSqueezeExcite()
        assertMNCError(try bindONNX(model, to: squeezeExciteGraph(squeeze: 3), file: "se.onnx"),
                       contains: "layer block (squeeze-excitation fc1) expects 3 output channels, node 3 (Conv fc1) in the model has 2")
    }

    // MARK: Real models

    func testRealMobileNetV1Binds() throws {
        let directory = try sharedDataDirectory() + "/models/"
        for (alpha, resolution) in [(0.25, 128), (0.5, 160)] {
            let name = "mobilenet_v1_\(alpha)_\(resolution)_quant.tflite"
            let model = try TFLiteModel.load(path: directory + name)
            let graph = tfSlimMobileNetV1(alpha: alpha, resolution: resolution)
            let bound = try bindTFLite(model, to: graph, file: name)

            let batchNorms = graph.nodes.filter { if case .batchNorm = $0.op { return true } else { return false } }
            XCTAssertEqual(batchNorms.count, 27, name)
            XCTAssertEqual(bound.nodes.count, graph.nodes.count - 27, name)
            XCTAssertFalse(bound.nodes.contains { if case .batchNorm = $0.op { return true } else { return false } }, name)
            let parameterCount = bound.nodes.flatMap(\.parameters).count
            XCTAssertEqual(parameterCount, 28 * 2, name)
            XCTAssertEqual(bound.constants.count, parameterCount, name)
            XCTAssertEqual(bound.constants["Logits.conv.weight"]?.shape, [1001, alpha == 0.25 ? 256 : 512, 1, 1], name)
            XCTAssertEqual(bound.outputShape, [1, 1001], name)
        }
    }

    func testRealMobileNetV1Values() throws {
        // Expected values computed with the `flatbuffers` Python package's reader and NumPy from
        // the file's OHWI / 1HWC tensors, at the graph's [O, I, kh, kw] positions.
        let path = try sharedDataDirectory() + "/models/mobilenet_v1_0.25_128_quant.tflite"
        let bound = try bindTFLite(try TFLiteModel.load(path: path), to: tfSlimMobileNetV1(alpha: 0.25, resolution: 128),
                                   file: path)
        let stem = try XCTUnwrap(bound.constants["Conv2d_0.conv.weight"])
        XCTAssertEqual(stem.shape, [8, 3, 3, 3])
        XCTAssertEqual(stem.data[((1 * 3 + 2) * 3 + 0) * 3 + 1], -0.3464139858, accuracy: 1e-7)
        XCTAssertEqual(stem.data[((7 * 3 + 0) * 3 + 2) * 3 + 1], -0.1243537385, accuracy: 1e-7)
        XCTAssertEqual(bound.constants["Conv2d_0.conv.bias"]?.data[3] ?? 0, 4.57111019117, accuracy: 1e-5)

        let depthwise = try XCTUnwrap(bound.constants["Conv2d_1_depthwise.conv.weight"])
        XCTAssertEqual(depthwise.shape, [8, 1, 3, 3])
        XCTAssertEqual(depthwise.data[(5 * 3 + 2) * 3 + 0], -0.0894003436, accuracy: 1e-7)

        let logits = try XCTUnwrap(bound.constants["Logits.conv.weight"])
        XCTAssertEqual(logits.data[1000 * 256 + 255], 0.0387820522, accuracy: 1e-7)
        XCTAssertEqual(bound.constants["Logits.conv.bias"]?.data[0] ?? 0, -0.8788511152, accuracy: 1e-6)
    }

    func testRealMobileNetV1WidthMismatch() throws {
        let path = try sharedDataDirectory() + "/models/mobilenet_v1_0.25_128_quant.tflite"
        let model = try TFLiteModel.load(path: path)
        assertMNCError(try bindTFLite(model, to: tfSlimMobileNetV1(alpha: 0.5, resolution: 128), file: "v1.tflite"),
                       contains: "v1.tflite: layer Conv2d_0 expects 16 output channels, operator 0 (CONV_2D) in the model has 8")
    }

    func testRealMobileNetV2ONNXBinds() throws {
        let directory = try sharedDataDirectory()
        for (name, width, resolution, classes) in [("mobilenet_v2_1.0_224", 1.0, 224, 1000),
                                                   ("mobilenet_v2_0.5_160_c10", 0.5, 160, 10)] {
            let model = try ONNXModel.load(path: "\(directory)/onnx/\(name).onnx")
            let graph = torchvisionMobileNetV2(width: width, resolution: resolution, classes: classes)
            let bound = try bindONNX(model, to: graph, file: name)
            XCTAssertEqual(bound.nodes.count, graph.nodes.count - 52, name)
            XCTAssertEqual(bound.constants.count, 52 * 2 + 2, name)

            // The classifier is not folded: it must equal the PyTorch state dict exactly.
            let safetensors = "\(directory)/torch/\(name)/weights.safetensors"
            let reference = try readSafetensor(path: safetensors, name: "classifier.1.weight")
            XCTAssertEqual(bound.constants["classifier.1.weight"]?.shape, reference.shape, name)
            XCTAssertEqual(bound.constants["classifier.1.weight"]?.data, reference.data, name)
        }
    }

    func testRealMobileNetV3ONNXBinds() throws {
        let directory = try sharedDataDirectory()
        // (case, large, convolutions with BatchNorm, squeeze-excitation blocks)
        for (name, large, folded, blocks) in [("mobilenet_v3_large_1.0_224", true, 46, 8),
                                              ("mobilenet_v3_small_1.0_224", false, 34, 9)] {
            let model = try ONNXModel.load(path: "\(directory)/onnx/\(name).onnx")
            let graph = torchvisionMobileNetV3(large: large, resolution: 224, classes: 1000)
            let bound = try bindONNX(model, to: graph, file: name)
            XCTAssertEqual(bound.nodes.count, graph.nodes.count - folded, name)
            XCTAssertEqual(bound.constants.count, folded * 2 + blocks * 4 + 4, name)

            // Squeeze-excitation and classifier weights are not folded: they must equal the state dict.
            let safetensors = "\(directory)/torch/\(name)/weights.safetensors"
            for key in ["features.4.block.2.fc1.weight", "features.6.block.2.fc2.bias", "classifier.0.weight",
                        "classifier.3.bias"] {
                let reference = try readSafetensor(path: safetensors, name: key)
                XCTAssertEqual(bound.constants[key]?.shape, reference.shape, "\(name) \(key)")
                XCTAssertEqual(bound.constants[key]?.data, reference.data, "\(name) \(key)")
            }
        }
    }

    func testRealTFLiteV2AgainstTorchvisionGraph() throws {
        // TensorFlow pads stride-2 convolutions on even sizes 0 before and 1 after; torchvision pads 1 on both sides.
        let path = try sharedDataDirectory() + "/models/mobilenet_v2_1.0_224_quant.tflite"
        let model = try TFLiteModel.load(path: path)
        assertMNCError(try bindTFLite(model, to: torchvisionMobileNetV2(width: 1, resolution: 224, classes: 1001),
                                      file: "v2.tflite"),
                       contains: "v2.tflite: layer features.0 expects padding 1, operator 0 (CONV_2D) in the model has padding SAME, which is (0,0,1,1) for a 224x224 input")
    }

    func testRealMobileNetV2ONNXFoldedStem() throws {
        // The exporter folds BatchNorm: w' = w × γ / √(σ² + ε), b' = β − μ × γ / √(σ² + ε), ε = 1e-5.
        let directory = try sharedDataDirectory()
        let name = "mobilenet_v2_0.5_160_c10"
        let model = try ONNXModel.load(path: "\(directory)/onnx/\(name).onnx")
        let bound = try bindONNX(model, to: torchvisionMobileNetV2(width: 0.5, resolution: 160, classes: 10), file: name)
        let safetensors = "\(directory)/torch/\(name)/weights.safetensors"
        let weight = try readSafetensor(path: safetensors, name: "features.0.0.weight").data
        let gamma = try readSafetensor(path: safetensors, name: "features.0.1.weight").data
        let beta = try readSafetensor(path: safetensors, name: "features.0.1.bias").data
        let mean = try readSafetensor(path: safetensors, name: "features.0.1.running_mean").data
        let variance = try readSafetensor(path: safetensors, name: "features.0.1.running_var").data

        let boundWeight = try XCTUnwrap(bound.constants["features.0.0.weight"])
        let boundBias = try XCTUnwrap(bound.constants["features.0.0.bias"])
        XCTAssertEqual(boundWeight.shape, [16, 3, 3, 3])
        let perChannel = weight.count / gamma.count
        for channel in 0..<gamma.count {
            let factor = gamma[channel] / (variance[channel] + 1e-5).squareRoot()
            XCTAssertEqual(boundBias.data[channel], beta[channel] - mean[channel] * factor,
                           accuracy: 1e-4 * max(1, abs(beta[channel])), "bias \(channel)")
            for index in (channel * perChannel)..<((channel + 1) * perChannel) {
                XCTAssertEqual(boundWeight.data[index], weight[index] * factor,
                               accuracy: 1e-5 * max(1, abs(weight[index] * factor)), "weight \(index)")
            }
        }
    }
}
