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

    /// Returns the compiler flags of the instruction-set tiers: the default flags (vector
    /// extensions on x86-64), AVX2, AVX-512 where the CPU has it, and plain C under the sanitizers.
    func tierFlags() -> [[String]] {
        var tiers: [[String]] = [[], ["-DKERNELS_SCALAR"] + CBackendTests.sanitizerFlags]
        let flags = cpuFlags()
        if flags.contains("avx2") && flags.contains("fma") { tiers.append(["-mavx2", "-mfma"]) }
        if flags.contains("avx512f") { tiers.append(["-mavx512f", "-mfma"] + CBackendTests.sanitizerFlags) }
        return tiers
    }

    /// Runs `graph` (optimized at -O2) through the generated C on every tier and compares the
    /// logits with the interpreter's on the unoptimized graph: max |Δ| ≤ 1e-4 · max |logit|.
    func checkTiers(_ graph: Graph, label: String, disabled: Set<String> = [], file: StaticString = #filePath, line: UInt = #line) throws {
        let bound = varianceKeepingWeights(graph)
        let input = randomInput(count: bound.nodes[0].elementCount)
        let expected = try Interpreter(graph: bound).run(input: input)
        let optimized = try optimize(bound, disabled: disabled)
        let tiers = tierFlags()
        let results = concurrentMap(tiers) { flags in
            try runGeneratedC(graph: optimized, input: input, inputLayout: .nchw, compiler: self.compiler, extraFlags: flags)
        }
        for (flags, result) in zip(tiers, results) {
            let name = "\(label) \(disabled.sorted()) [\(flags.joined(separator: " "))]"
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

    /// Depthwise kernels 3×3 and 5×5, stride 1 and 2, with symmetric and asymmetric padding.
    /// The maps are narrower than one pixel block or wide enough for interior block loops, the
    /// channel counts leave partial vectors, and one convolution adds a residual.
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

    // MARK: - Fused blocks

    /// Appends an inverted-residual block: 1×1 expansion with ReLU6, depthwise convolution
    /// with hardswish, 1×1 projection, and the residual when the shapes allow it.
    static func appendBlock(_ builder: inout KernelGraphBuilder, from x: Int, expansion: Int, kernel: Int, stride: Int, padding: Padding,
                            outChannels: Int, squeeze: Int? = nil) -> Int {
        let channels = builder.shape(x)[1] * expansion
        let expanded = builder.pointwise(from: x, outChannels: channels, activation: .relu6)
        var filtered = builder.convolution(from: expanded, outChannels: channels, kernel: kernel, stride: stride, padding: padding,
                                           groups: channels, activation: .hardswish)
        if let squeeze {
            filtered = builder.squeezeExcite(from: filtered, squeezeChannels: squeeze)
        }
        let sameShape = builder.shape(filtered)[2] == builder.shape(x)[2] && builder.shape(filtered)[3] == builder.shape(x)[3]
        let residual = sameShape && outChannels == builder.shape(x)[1] ? x : nil
        return builder.pointwise(from: filtered, outChannels: outChannels, activation: .identity, residual: residual)
    }

    /// Returns graphs whose fused blocks cover the kernel's cases. They have the first 3×3
    /// convolution as the expansion on a planar input, no expansion, stride 2 with asymmetric
    /// (SAME) padding, 5×5 kernels, residuals and squeeze-excitations. Their sizes give several
    /// bands with a partial last band, a ring of several chunks with a partial last chunk, and
    /// odd channel counts.
    static func fusedBlockGraphs() -> [(String, Graph)] {
        let one = Padding(top: 1, left: 1, bottom: 1, right: 1), two = Padding(top: 2, left: 2, bottom: 2, right: 2)
        var graphs: [(String, Graph)] = []

        var stem = KernelGraphBuilder(channels: 3, height: 17, width: 23, layout: .nchw)
        var x = stem.convolution(from: 0, outChannels: 12, kernel: 3, stride: 2, padding: one, groups: 1, activation: .relu6)
        let filtered = stem.convolution(from: x, outChannels: 12, kernel: 3, stride: 1, padding: one, groups: 12, activation: .relu6)
        x = stem.pointwise(from: filtered, outChannels: 8, activation: .identity)
        x = appendBlock(&stem, from: x, expansion: 6, kernel: 3, stride: 2, padding: Padding(top: 0, left: 0, bottom: 1, right: 1), outChannels: 12)
        // With squeeze-excitations: 12 outputs on 24 pixels scale the weights, 20 outputs on 6
        // pixels scale the depthwise output.
        x = appendBlock(&stem, from: x, expansion: 3, kernel: 5, stride: 1, padding: two, outChannels: 12, squeeze: 8)
        x = appendBlock(&stem, from: x, expansion: 4, kernel: 5, stride: 2, padding: Padding(top: 1, left: 2, bottom: 2, right: 1),
                        outChannels: 20, squeeze: 12)
        graphs.append(("stem 17x23", stem.finish(from: x)))

        // A tall map: bands of 10 rows over 37, a ring of 3 chunks of 10 rows, a last chunk of 7.
        var tall = KernelGraphBuilder(channels: 5, height: 37, width: 5)
        x = tall.pointwise(from: 0, outChannels: 7, activation: .relu)
        let separable = tall.convolution(from: x, outChannels: 7, kernel: 3, stride: 1, padding: one, groups: 7, activation: .relu6)
        x = tall.pointwise(from: separable, outChannels: 7, activation: .relu6, residual: x)
        x = appendBlock(&tall, from: x, expansion: 6, kernel: 3, stride: 1, padding: one, outChannels: 7)
        graphs.append(("tall 37x5", tall.finish(from: x)))

        // Stride 2 on 45x20: bands of 5 output rows, chunks of 10 expanded rows, a last chunk of 5.
        var strided = KernelGraphBuilder(channels: 9, height: 45, width: 20)
        x = strided.pointwise(from: 0, outChannels: 9, activation: .relu)
        x = appendBlock(&strided, from: x, expansion: 2, kernel: 3, stride: 2, padding: one, outChannels: 17)
        x = appendBlock(&strided, from: x, expansion: 5, kernel: 5, stride: 1, padding: two, outChannels: 17)
        graphs.append(("strided 45x20", strided.finish(from: x)))
        return graphs
    }

    func testFusedBlockPassFusesTestGraphs() throws {
        for (label, graph) in PerformanceKernelTests.fusedBlockGraphs() {
            let fused = try optimize(graph).nodes.filter { if case .fusedBlock = $0.op { return true } else { return false } }
            XCTAssertEqual(fused.count, label.hasPrefix("stem") ? 4 : label.hasPrefix("tall") ? 2 : 2, label)
        }
    }

    func testFusedBlockParity() throws {
        for (label, graph) in PerformanceKernelTests.fusedBlockGraphs() {
            try checkTiers(graph, label: label)
        }
    }

    /// Fused blocks whose depthwise output has channels that are zero in every pixel, so that the
    /// projection skips them (see `zeroChannelGraph`). On every tier the logits must match the
    /// interpreter's, and be bit for bit those of the same code compiled with
    /// KERNELS_ALL_CHANNELS, which skips nothing: the skipped terms are ±0 · w.
    func testFusedBlockSkipsZeroChannels() throws {
        let graph = Self.zeroChannelGraph()
        XCTAssertTrue(try generateC(optimize(bindRandomWeights(to: graph))).source.contains("nonzero_channels_f32(band"))
        var bound = varianceKeepingWeights(graph)
        XCTAssertEqual(Self.zeroChannels(&bound), 21 + 23 + 21)

        let input = randomInput(count: bound.nodes[0].elementCount)
        let expected = try Interpreter(graph: bound).run(input: input)
        let optimized = try optimize(bound)
        let tiers = tierFlags()
        let results = concurrentMap(tiers.flatMap { [$0, $0 + ["-DKERNELS_ALL_CHANNELS"]] }) { flags in
            try runGeneratedC(graph: optimized, input: input, inputLayout: .nchw, compiler: self.compiler, extraFlags: flags)
        }
        for (index, flags) in tiers.enumerated() {
            let skipping = try results[2 * index].get(), allChannels = try results[2 * index + 1].get()
            XCTAssertEqual(skipping.count, expected.count, "\(flags)")
            XCTAssertLessThanOrEqual(maxAbsDifference(skipping, expected), 1e-4 * maxAbs(expected), "\(flags)")
            XCTAssertEqual(skipping, allChannels, "\(flags)")
        }
    }

    /// Three fused blocks on a 13×9 map, of several bands: 40 and 60 expanded channels with and
    /// without a residual, then 42 with a squeeze-excitation. `zeroChannels` makes some of their
    /// depthwise outputs' channels zero.
    static func zeroChannelGraph() -> Graph {
        let one = Padding(top: 1, left: 1, bottom: 1, right: 1), two = Padding(top: 2, left: 2, bottom: 2, right: 2)
        var builder = KernelGraphBuilder(channels: 6, height: 13, width: 9)
        var x = builder.pointwise(from: 0, outChannels: 10, activation: .relu)
        x = appendBlock(&builder, from: x, expansion: 4, kernel: 3, stride: 1, padding: one, outChannels: 10)
        x = appendBlock(&builder, from: x, expansion: 6, kernel: 3, stride: 2, padding: one, outChannels: 14)
        x = appendBlock(&builder, from: x, expansion: 3, kernel: 5, stride: 1, padding: two, outChannels: 14, squeeze: 8)
        return builder.finish(from: x)
    }

    /// Sets the bias of some channels of every block's depthwise convolution of a bound
    /// `zeroChannelGraph` far below hardswish's zero, so those channels are -0.0f in every pixel.
    /// They are the first and the last channel, a whole vector of 16 and scattered ones. Returns
    /// how many.
    static func zeroChannels(_ bound: inout Graph) -> Int {
        var count = 0
        for node in bound.nodes {
            guard case .conv2d(let conv) = node.op, conv.isDepthwise, conv.kernelHeight <= 5,
                  let key = node.parameter("bias")?.key, var bias = bound.constants[key] else { continue }
            for c in 0..<conv.outChannels where c == 0 || c == conv.outChannels - 1 || (16..<32).contains(c) || c % 7 == 3 {
                bias.data[c] = -1000
                count += 1
            }
            bound.constants[key] = bias
        }
        return count
    }

    /// The channel list behind that skipping, on every tier: channels that hold only +0.0f and
    /// -0.0f are left out. One ordinary value, a denormal or a NaN in any pixel keeps a channel.
    /// Channel counts of 1 to 37 leave partial vectors of 16 and of 8. KERNELS_ALL_CHANNELS lists
    /// every channel.
    func testNonzeroChannelList() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-nonzero")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pixels = 5, counts = [1, 8, 9, 16, 17, 37]
        // Channel c has, in pixel c % 5, 1.5 when c % 4 == 1, a denormal when c % 6 == 2 and a NaN
        // when c == 16. Every other value is +0.0f or -0.0f.
        let main = """
            #include <math.h>
            #include <stdio.h>
            int main(void)
            {
                static const int counts[] = {\(counts.map(String.init).joined(separator: ", "))};
                static float x[\(pixels) * 37];
                int list[37];
                for (int i = 0; i < \(counts.count); ++i) {
                    const int channels = counts[i];
                    for (int p = 0; p < \(pixels); ++p) {
                        for (int c = 0; c < channels; ++c) {
                            float value = (p + c) % 2 == 0 ? 0.0f : -0.0f;
                            if (p == c % \(pixels)) {
                                if (c % 4 == 1) value = 1.5f;
                                else if (c % 6 == 2) value = 1e-40f;
                                else if (c == 16) value = NAN;
                            }
                            x[p * channels + c] = value;
                        }
                    }
                    const int count = nonzero_channels_f32(x, \(pixels), channels, list);
                    printf("%d:", channels);
                    for (int k = 0; k < count; ++k) printf(" %d", list[k]);
                    printf("\\n");
                }
                return 0;
            }

            """
        let source = "#include <stdint.h>\n" + kernelPreambleSource + "\n" + CHelper.activation.source + "\n"
            + CHelper.nonzeroChannels.source + "\n" + main
        try writeFile(directory + "/list.c", Array(source.utf8))
        let expected = counts.map { channels in
            "\(channels):" + (0..<channels).filter { $0 % 4 == 1 || $0 % 6 == 2 || $0 == 16 }.map { " \($0)" }.joined()
        }.joined(separator: "\n") + "\n"
        for (index, flags) in tierFlags().enumerated() {
            let executable = directory + "/list\(index)"
            try compiler.linkExecutable(sources: [directory + "/list.c"], output: executable, extraFlags: flags + ["-Werror"])
            let (status, output) = try runProcess([executable])
            XCTAssertEqual(status, 0, "\(flags): \(output)")
            XCTAssertEqual(output, expected, "\(flags)")
        }
        // KERNELS_ALL_CHANNELS turns the skipping off: every channel is listed.
        let executable = directory + "/all"
        try compiler.linkExecutable(sources: [directory + "/list.c"], output: executable, extraFlags: ["-DKERNELS_ALL_CHANNELS", "-Werror"])
        let (status, output) = try runProcess([executable])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output, counts.map { channels in "\(channels):" + (0..<channels).map { " \($0)" }.joined() }.joined(separator: "\n") + "\n")
    }

    /// Without weight packing, a fused block runs its convolutions one after another.
    func testFusedBlockWithoutPacking() throws {
        for (label, graph) in PerformanceKernelTests.fusedBlockGraphs() {
            try checkTiers(graph, label: label, disabled: ["pack-weights"])
        }
    }

    func testFusedBlockSchedulesWithExcitation() throws {
        let graphs = Dictionary(uniqueKeysWithValues: PerformanceKernelTests.fusedBlockGraphs())
        let stem = try XCTUnwrap(graphs["stem 17x23"])
        let schedules = try optimize(stem).nodes.compactMap { node -> FusedBlockSchedule? in
            guard case .fusedBlock(let block) = node.op, block.squeezeExcite != nil else { return nil }
            return fusedBlockSchedule(node, block)
        }
        XCTAssertEqual(schedules.map(\.scalesWeights), [true, false])
        // 4x6 pixels of 36 channels and 2x3 pixels of 48 channels: the whole depthwise output.
        XCTAssertEqual(schedules.map(\.bandFloats), [864, 288])
        // 36 x 12 scaled weights (432 floats, rounded up to 64 bytes); none when the output is scaled.
        XCTAssertEqual(schedules.map(\.gatedFloats), [432, 0])
    }

    func testFusedBlockSchedules() throws {
        let graphs = Dictionary(uniqueKeysWithValues: PerformanceKernelTests.fusedBlockGraphs())
        let tall = try XCTUnwrap(graphs["tall 37x5"])
        let schedules = try optimize(tall).nodes.compactMap { node -> FusedBlockSchedule? in
            guard case .fusedBlock(let block) = node.op else { return nil }
            return fusedBlockSchedule(node, block)
        }
        XCTAssertEqual(schedules.count, 2)
        let expanded = try XCTUnwrap(schedules.last)
        XCTAssertTrue(expanded.streams)
        XCTAssertEqual(expanded.bandRows, 10)
        XCTAssertEqual(expanded.chunkRows, 10)
        XCTAssertEqual(expanded.ringChunks, 3)
        // 3 chunks of 10 rows of 5 pixels of 42 channels (6300 floats), and 10 rows of the band
        // buffer (2100 floats), each rounded up to 64 bytes.
        XCTAssertEqual(expanded.ringFloats, 6304)
        XCTAssertEqual(expanded.bandFloats, 2112)
    }

    func testVerifierRejectsInconsistentFusedBlocks() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 10)))
        let index = try XCTUnwrap(graph.nodes.firstIndex { $0.op.mnemonic == "fused_block" && $0.inputs.count == 2 })
        guard case .fusedBlock(let block) = graph.nodes[index].op else { return XCTFail("node \(index) is not a fused block") }

        var cases: [(String, (inout Node) -> Void)] = []
        cases.append(("expanded size", { node in
            var changed = block
            changed.expandedHeight += 1
            node.op = .fusedBlock(changed)
        }))
        cases.append(("the depthwise stage", { node in
            var changed = block
            changed.depthwise.groups = 1
            node.op = .fusedBlock(changed)
        }))
        cases.append(("the projection", { node in
            var changed = block
            changed.project.strideHeight = 2
            node.op = .fusedBlock(changed)
        }))
        cases.append(("expected 2 inputs", { node in node.inputs = [node.inputs[0]] }))
        cases.append(("missing parameter 'depthwise.bias'", { node in node.parameters.removeAll { $0.role == "depthwise.bias" } }))
        for (message, mutate) in cases {
            var broken = graph
            mutate(&broken.nodes[index])
            XCTAssertThrowsError(try verify(broken), message) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error)")
            }
        }
    }

    /// Whole networks at sizes and widths that the other parity tests do not use: bands and rings
    /// with partial last rows on non-square maps, and SAME padding on odd and even sizes.
    func testNetworksAtOddSizes() throws {
        let cases: [(String, SpecOverrides)] = [
            ("mobilenet_v2", SpecOverrides(widthMultiplier: 0.75, inputHeight: 161, inputWidth: 129, classes: 10)),
            ("tf_mobilenet_v2", SpecOverrides(widthMultiplier: 0.5, inputHeight: 97, inputWidth: 76, classes: 10)),
            ("mobilenet_v3_large", SpecOverrides(widthMultiplier: 0.75, inputHeight: 90, inputWidth: 131, classes: 10)),
            ("mobilenet_v1", SpecOverrides(widthMultiplier: 0.5, inputHeight: 75, inputWidth: 75, classes: 10)),
        ]
        let prepared = try cases.map { name, overrides -> (String, Graph, [Float], [Float]) in
            let graph = varianceKeepingWeights(try loadSpec(name, overrides))
            let input = randomInput(count: graph.nodes[0].elementCount)
            return (name, graph, input, try Interpreter(graph: graph).run(input: input))
        }
        let results = concurrentMap(prepared) { _, graph, input, _ in
            try runGeneratedC(graph: try optimize(graph), input: input, inputLayout: .nchw, compiler: self.compiler,
                              extraFlags: ["-O2", "-march=native"])
        }
        for ((name, _, _, expected), result) in zip(prepared, results) {
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)")
            case .success(let actual):
                XCTAssertEqual(actual.count, expected.count, name)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name)
            }
        }
    }

    /// MobileNetV2 at 224: every block fused, and an arena of at most 1.5 MB (1,500,000 bytes).
    func testMobileNetV2ArenaSize() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2"))
        XCTAssertEqual(graph.nodes.filter { $0.op.mnemonic == "fused_block" }.count, 17)
        let generated = try generateC(graph)
        XCTAssertLessThanOrEqual(generated.arenaSize, 1_500_000)
    }
}

/// Builds small test graphs: convolutions under test, then a depthwise
/// convolution whose window covers the whole feature map, so every output pixel of the ops
/// under test reaches the logits with its own random weight.
struct KernelGraphBuilder {
    var nodes: [Node] = []

    var layout: TensorLayout

    init(channels: Int, height: Int, width: Int, layout: TensorLayout = .nhwc) {
        self.layout = layout
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

    /// Appends a fused squeeze-excitation (ReLU, hardsigmoid gate) and returns its node index.
    mutating func squeezeExcite(from input: Int, squeezeChannels: Int) -> Int {
        let channels = shape(input)[1]
        let se = SqueezeExcite(channels: channels, squeezeChannels: squeezeChannels, activation: .relu, gate: .hardsigmoid)
        let name = "n\(nodes.count)"
        let parameters = [
            Parameter(role: "fc1.weight", key: "\(name).fc1.weight", shape: [squeezeChannels, channels, 1, 1]),
            Parameter(role: "fc1.bias", key: "\(name).fc1.bias", shape: [squeezeChannels]),
            Parameter(role: "fc2.weight", key: "\(name).fc2.weight", shape: [channels, squeezeChannels, 1, 1]),
            Parameter(role: "fc2.bias", key: "\(name).fc2.bias", shape: [channels]),
        ]
        nodes.append(Node(op: .squeezeExcite(se), inputs: [input], shape: shape(input), parameters: parameters, name: name, layer: name))
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
        preprocessing.layout = layout
        return Graph(name: "kernel_test", nodes: builder.nodes, output: builder.nodes.count - 1, preprocessing: preprocessing)
    }
}
