import Foundation
import XCTest
@testable import MNC

/// The fast kernel forms: the panel weight layout and the pointwise GEMM on shapes whose
/// pixel and channel counts leave partial register tiles, on every instruction-set tier.
final class PerformanceKernelTests: XCTestCase {
    let compiler = CCompiler(command: ["cc"])

    // MARK: - Panel layout

    /// Positions in `io_panels` follow the layout's definition: 40 outputs are one 32-column
    /// panel and one 8-column panel, each `[in][width]`.
    func testPanelLayoutPositions() {
        var conv = Conv2D(inChannels: 2, outChannels: 40, kernelHeight: 1, kernelWidth: 1, strideHeight: 1, strideWidth: 1,
                          padding: Padding(top: 0, left: 0, bottom: 0, right: 0), groups: 1, hasBias: false)
        conv.activation = .identity
        // PyTorch order: weight[o][i] = 100 * o + i.
        let weight = (0..<40).flatMap { o in (0..<2).map { i in Float(100 * o + i) } }
        let packed = packConvolutionWeight(weight, conv: conv, layout: .inputOutputPanels)
        XCTAssertEqual(packed.count, 80)
        XCTAssertEqual(packed[0], 0, "panel 0, in 0, out 0")
        XCTAssertEqual(packed[31], 3100, "panel 0, in 0, out 31")
        XCTAssertEqual(packed[32], 1, "panel 0, in 1, out 0")
        XCTAssertEqual(packed[64], 3200, "panel 1, in 0, out 32")
        XCTAssertEqual(packed[71], 3900, "panel 1, in 0, out 39")
        XCTAssertEqual(packed[72], 3201, "panel 1, in 1, out 32")
        XCTAssertEqual(packed[79], 3901, "panel 1, in 1, out 39")
    }

    func testPanelLayoutRoundTrip() {
        for outChannels in [1, 31, 32, 33, 64, 70] {
            let conv = Conv2D(inChannels: 5, outChannels: outChannels, kernelHeight: 1, kernelWidth: 1, strideHeight: 1,
                              strideWidth: 1, padding: Padding(top: 0, left: 0, bottom: 0, right: 0), groups: 1, hasBias: false)
            let weight = (0..<(5 * outChannels)).map(Float.init)
            let packed = packConvolutionWeight(weight, conv: conv, layout: .inputOutputPanels)
            XCTAssertEqual(Set(packed), Set(weight), "out \(outChannels): a permutation")
            XCTAssertEqual(packConvolutionWeight(packed, conv: conv, layout: .inputOutputPanels, unpack: true), weight, "out \(outChannels)")
        }
    }

    func testPackPassChoosesPanelsForGEMMForm() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2"))
        for node in graph.nodes {
            guard case .conv2d(let conv) = node.op, conv.isPointwise, let weight = node.parameter("weight") else { continue }
            XCTAssertEqual(weight.layout, .inputOutputPanels, node.name)
        }
    }

    // MARK: - Generated C against the interpreter

    /// The instruction-set tiers: the default flags (vector extensions on x86-64), AVX2,
    /// AVX-512 where the CPU has it, and plain C under the sanitizers.
    func tierFlags() -> [[String]] {
        var tiers: [[String]] = [[], ["-DKERNELS_SCALAR"] + CBackendTests.sanitizerFlags]
        let flags = cpuFlags()
        if flags.contains("avx2") && flags.contains("fma") { tiers.append(["-mavx2", "-mfma"]) }
        if flags.contains("avx512f") { tiers.append(["-mavx512f", "-mfma"] + CBackendTests.sanitizerFlags) }
        return tiers
    }

    /// Runs `graph` (optimized at -O2) through the generated C on every tier and compares the
    /// logits with the interpreter's on the unoptimized graph: max |Δ| ≤ 1e-4 · max |logit|.
    func checkTiers(_ graph: Graph, label: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let bound = varianceKeepingWeights(graph)
        let input = randomInput(count: bound.nodes[0].elementCount)
        let expected = try Interpreter(graph: bound).run(input: input)
        let optimized = try optimize(bound)
        let tiers = tierFlags()
        let results = concurrentMap(tiers) { flags in
            try runGeneratedC(graph: optimized, input: input, inputLayout: .nchw, compiler: self.compiler, extraFlags: flags)
        }
        for (flags, result) in zip(tiers, results) {
            let name = "\(label) [\(flags.joined(separator: " "))]"
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)", file: file, line: line)
            case .success(let actual):
                XCTAssertEqual(actual.count, expected.count, name, file: file, line: line)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name, file: file, line: line)
            }
        }
    }

    /// Pointwise GEMMs whose pixel counts leave a partial row tile and whose output counts
    /// leave a partial panel (1, 24, 33, 70 channels), with and without residual.
    func testPointwisePartialTiles() throws {
        for (height, width, inChannels, outChannels) in [(3, 5, 7, 24), (7, 7, 16, 33), (1, 13, 9, 70), (2, 2, 3, 1)] {
            var builder = KernelGraphBuilder(channels: inChannels, height: height, width: width)
            let first = builder.pointwise(from: 0, outChannels: outChannels, activation: .relu6)
            let second = builder.pointwise(from: first, outChannels: outChannels, activation: .hardswish, residual: first)
            try checkTiers(builder.finish(from: second), label: "\(height)x\(width)x\(inChannels) -> \(outChannels)")
        }
    }

    /// Depthwise kernels 3×3 and 5×5, stride 1 and 2, symmetric and asymmetric padding, on
    /// maps narrower than one pixel block, with interior block loops, and with channel counts
    /// that leave partial vectors; one convolution adds a residual.
    func testDepthwiseEdgeForms() throws {
        let same = Padding(top: 1, left: 1, bottom: 1, right: 1)
        for (channels, height, width) in [(24, 17, 9), (7, 5, 12), (40, 1, 3), (16, 33, 41)] {
            var builder = KernelGraphBuilder(channels: channels, height: height, width: width)
            let first = builder.convolution(from: 0, outChannels: channels, kernel: 3, stride: 1, padding: same, groups: channels,
                                            activation: .relu6)
            let second = builder.convolution(from: first, outChannels: channels, kernel: 3, stride: 1, padding: same, groups: channels,
                                             activation: .identity, residual: first)
            let third = builder.convolution(from: second, outChannels: channels, kernel: 5, stride: 2,
                                            padding: Padding(top: 1, left: 2, bottom: 2, right: 1), groups: channels, activation: .hardswish)
            let fourth = builder.convolution(from: third, outChannels: channels, kernel: 3, stride: 2,
                                             padding: Padding(top: 0, left: 1, bottom: 1, right: 0), groups: channels, activation: .relu)
            try checkTiers(builder.finish(from: fourth), label: "depthwise \(height)x\(width)x\(channels)")
        }
    }
}

/// Builds small test graphs on an NHWC input: convolutions under test, then a depthwise
/// convolution whose window covers the whole feature map, so every output pixel of the ops
/// under test reaches the logits with its own random weight.
struct KernelGraphBuilder {
    var nodes: [Node] = []

    init(channels: Int, height: Int, width: Int) {
        nodes.append(Node(op: .input, inputs: [], shape: [1, channels, height, width], name: "input", layer: "input"))
    }

    func shape(_ index: Int) -> [Int] { nodes[index].shape }

    /// Appends a convolution with bias and returns its node index.
    mutating func convolution(from input: Int, outChannels: Int, kernel: Int, stride: Int, padding: Padding, groups: Int,
                              activation: Activation, residual: Int? = nil) -> Int {
        let x = shape(input)
        var conv = Conv2D(inChannels: x[1], outChannels: outChannels, kernelHeight: kernel, kernelWidth: kernel,
                          strideHeight: stride, strideWidth: stride, padding: padding, groups: groups, hasBias: true)
        conv.activation = activation
        conv.hasResidual = residual != nil
        let outHeight = (x[2] + padding.top + padding.bottom - kernel) / stride + 1
        let outWidth = (x[3] + padding.left + padding.right - kernel) / stride + 1
        let name = "n\(nodes.count)"
        var node = Node(op: .conv2d(conv), inputs: [input] + (residual.map { [$0] } ?? []), shape: [1, outChannels, outHeight, outWidth],
                        parameters: [Parameter(role: "weight", key: "\(name).weight", shape: conv.weightShape),
                                     Parameter(role: "bias", key: "\(name).bias", shape: [outChannels])],
                        name: name, layer: name)
        node.fusedOps = ["conv\(kernel)x\(kernel)"] + (activation == .identity ? [] : [activation.rawValue]) + (residual == nil ? [] : ["add"])
        nodes.append(node)
        return nodes.count - 1
    }

    mutating func pointwise(from input: Int, outChannels: Int, activation: Activation, residual: Int? = nil) -> Int {
        convolution(from: input, outChannels: outChannels, kernel: 1, stride: 1, padding: Padding(top: 0, left: 0, bottom: 0, right: 0),
                    groups: 1, activation: activation, residual: residual)
    }

    /// Appends the whole-map depthwise readout and the flatten that makes it logits `[1, C]`.
    func finish(from last: Int) -> Graph {
        var builder = self
        let x = shape(last)
        var conv = Conv2D(inChannels: x[1], outChannels: x[1], kernelHeight: x[2], kernelWidth: x[3], strideHeight: 1, strideWidth: 1,
                          padding: Padding(top: 0, left: 0, bottom: 0, right: 0), groups: x[1], hasBias: true)
        conv.activation = .identity
        let readout = Node(op: .conv2d(conv), inputs: [last], shape: [1, x[1], 1, 1],
                           parameters: [Parameter(role: "weight", key: "readout.weight", shape: conv.weightShape),
                                        Parameter(role: "bias", key: "readout.bias", shape: [x[1]])],
                           name: "readout", layer: "readout")
        builder.nodes.append(readout)
        builder.nodes.append(Node(op: .flatten, inputs: [builder.nodes.count - 1], shape: [1, x[1]], name: "flatten", layer: "flatten"))
        var preprocessing = Preprocessing()
        preprocessing.layout = .nhwc
        return Graph(name: "kernel_test", nodes: builder.nodes, output: builder.nodes.count - 1, preprocessing: preprocessing)
    }
}
