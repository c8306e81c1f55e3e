import XCTest
@testable import MNC

/// Each pass on a small hand-built graph: the structure after the pass, and the values the
/// interpreter computes before and after.
final class PassUnitTests: XCTestCase {
    /// input 4x6x6 → conv3x3 (8) → bn → relu6 → conv1x1 (4) → bn → add(input-projection) ...
    func smallBlock(squeezeExcite: Bool = false) -> Graph {
        var builder = MNC.GraphBuilder()
        let input = builder.add(.input, inputs: [], shape: [1, 4, 6, 6], name: "input", layer: "input")
        var x = try! builder.conv(input, out: 8, kernel: 3, stride: 1, groups: 1, bias: false, padding: .symmetric, name: "b.0", layer: "b")
        x = builder.batchNorm(x, epsilon: 1e-5, name: "b.1", layer: "b")
        x = builder.activation(x, .relu6, name: "b.2", layer: "b")
        if squeezeExcite {
            let block = x
            var s = builder.add(.globalAveragePool, inputs: [x], shape: [1, 8, 1, 1], name: "se.avgpool", layer: "se")
            s = try! builder.conv(s, out: 8, kernel: 1, stride: 1, groups: 1, bias: true, padding: .symmetric, name: "se.fc1", layer: "se")
            s = builder.activation(s, .relu, name: "se.activation", layer: "se")
            s = try! builder.conv(s, out: 8, kernel: 1, stride: 1, groups: 1, bias: true, padding: .symmetric, name: "se.fc2", layer: "se")
            s = builder.activation(s, .hardsigmoid, name: "se.scale_activation", layer: "se")
            x = builder.add(.channelScale, inputs: [block, s], shape: [1, 8, 6, 6], name: "se.scale", layer: "se")
        }
        x = try! builder.conv(x, out: 4, kernel: 1, stride: 1, groups: 1, bias: false, padding: .symmetric, name: "b.3", layer: "b")
        x = builder.batchNorm(x, epsilon: 1e-5, name: "b.4", layer: "b")
        x = builder.add(.add, inputs: [input, x], shape: [1, 4, 6, 6], name: "b.add", layer: "b")
        x = builder.add(.globalAveragePool, inputs: [x], shape: [1, 4, 1, 1], name: "avgpool", layer: "avgpool")
        x = builder.add(.flatten, inputs: [x], shape: [1, 4], name: "flatten", layer: "flatten")
        x = builder.add(.dropout(probability: 0.2), inputs: [x], shape: [1, 4], name: "classifier.0", layer: "classifier.0")
        x = builder.add(.linear(Linear(inFeatures: 4, outFeatures: 3, hasBias: true)), inputs: [x], shape: [1, 3],
                        parameters: [Parameter(role: "weight", key: "classifier.1.weight", shape: [3, 4]),
                                     Parameter(role: "bias", key: "classifier.1.bias", shape: [3])],
                        name: "classifier.1", layer: "classifier.1")
        let graph = Graph(name: "small", nodes: builder.nodes, output: x, preprocessing: Preprocessing())
        return bindRandomWeights(to: graph, seed: 11)
    }

    /// Runs `pass` and checks the logits stay within 1e-5 of the largest.
    func apply(_ pass: Pass, to graph: Graph) throws -> Graph {
        let result = try pass.run(graph)
        try verify(result, after: pass.name)
        let input = randomInput(count: graph.nodes[0].elementCount)
        let before = try Interpreter(graph: graph).run(input: input)
        let after = try Interpreter(graph: result).run(input: input)
        XCTAssertLessThanOrEqual(maxAbsDifference(before, after), 1e-5 * max(maxAbs(before), 1), pass.name)
        return result
    }

    func testFoldBatchNorm() throws {
        let graph = smallBlock()
        let folded = try apply(foldBatchNormPass, to: graph)
        XCTAssertEqual(folded.nodes.count, graph.nodes.count - 2)
        XCTAssertFalse(folded.nodes.contains { $0.op.mnemonic == "bn" })
        XCTAssertEqual(folded.nodes[1].fusedOps, ["conv3x3", "bn"])
        XCTAssertEqual(folded.nodes[1].parameter("bias")?.key, "b.0.bias")
        XCTAssertEqual(folded.constants["b.0.bias"]?.shape, [8])
    }

    /// Finite values that overflow float32 when folded (a huge weight over a zero running
    /// variance) are an error naming the BatchNorm, the tensor and the index.
    func testFoldBatchNormRejectsOverflow() throws {
        var graph = smallBlock()
        graph.constants["b.1.running_var"]?.data[2] = 0
        graph.constants["b.0.weight"]?.data[2 * 36 + 5] = 3e38
        XCTAssertThrowsError(try foldBatchNorm(graph)) { error in
            XCTAssertEqual("\(error)", "error: fold-batchnorm: folding BatchNorm 'b.1' into 'b.0' makes weight 'b.0.weight' non-finite (inf) at index 77: check its running_var and weight")
        }
    }

    func testFoldBatchNormSkipsSharedConv() throws {
        // A conv whose value is also read elsewhere keeps its BatchNorm.
        var graph = smallBlock()
        let conv = 1
        let bnIndex = 2
        graph.nodes[3].inputs = [conv]
        graph.nodes.insert(Node(op: .add, inputs: [conv, bnIndex], shape: [1, 8, 6, 6], name: "extra", layer: "extra"), at: 3)
        for index in 4..<graph.nodes.count {
            graph.nodes[index].inputs = graph.nodes[index].inputs.map { $0 >= 3 ? $0 + 1 : $0 }
        }
        graph.output += 1
        let folded = try apply(foldBatchNormPass, to: graph)
        XCTAssertEqual(folded.nodes[2].op.mnemonic, "bn")
    }

    func testFuseActivation() throws {
        let graph = try foldBatchNorm(smallBlock())
        let fused = try apply(fuseActivationPass, to: graph)
        XCTAssertEqual(fused.nodes.count, graph.nodes.count - 1)
        guard case .conv2d(let conv) = fused.nodes[1].op else { return XCTFail("node 1 is not a conv") }
        XCTAssertEqual(conv.activation, .relu6)
        XCTAssertEqual(fused.nodes[1].fusedOps, ["conv3x3", "bn", "relu6"])
    }

    func testFuseResidualAdd() throws {
        let graph = try foldBatchNorm(smallBlock())
        let fused = try apply(fuseResidualAddPass, to: graph)
        XCTAssertFalse(fused.nodes.contains { $0.op == .add })
        let projection = try XCTUnwrap(fused.nodes.first { $0.name == "b.3" })
        guard case .conv2d(let conv) = projection.op else { return XCTFail("b.3 is not a conv") }
        XCTAssertTrue(conv.hasResidual)
        XCTAssertEqual(projection.inputs.last, 0)
        XCTAssertEqual(projection.fusedOps.last, "add")
    }

    func testFuseSqueezeExcite() throws {
        let graph = try fuseActivation(foldBatchNorm(smallBlock(squeezeExcite: true)))
        let fused = try apply(fuseSqueezeExcitePass, to: graph)
        XCTAssertEqual(fused.nodes.count, graph.nodes.count - 3)
        let se = try XCTUnwrap(fused.nodes.first { $0.op.mnemonic == "squeeze_excite" })
        XCTAssertEqual(se.parameters.map(\.role), ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
        XCTAssertEqual(se.parameter("fc2.weight")?.key, "se.fc2.weight")
        XCTAssertEqual(se.name, "se")
    }

    func testFuseSqueezeExciteNeedsFusedActivations() throws {
        // Without activation fusion the pattern is not there, and the pass changes nothing.
        let graph = try foldBatchNorm(smallBlock(squeezeExcite: true))
        let result = try apply(fuseSqueezeExcitePass, to: graph)
        XCTAssertEqual(result.nodes, graph.nodes)
    }

    func testRemoveIdentity() throws {
        let graph = smallBlock()
        let result = try apply(removeIdentityPass, to: graph)
        XCTAssertFalse(result.nodes.contains { $0.op.mnemonic == "dropout" || $0.op == .flatten })
        XCTAssertEqual(result.outputShape, [1, 3])
    }

    func testPackWeightsRoundTrips() throws {
        let graph = try foldBatchNorm(smallBlock())
        let packed = try apply(packWeightsPass, to: graph)
        XCTAssertEqual(packed.nodes[1].parameter("weight")?.layout, .hwio)
        let pointwise = try XCTUnwrap(packed.nodes.first { $0.name == "b.3" })
        XCTAssertEqual(pointwise.parameter("weight")?.layout, .inputOutputPanels)
        guard case .conv2d(let conv) = pointwise.op else { return XCTFail("b.3 is not a conv") }
        // [out 4, in 8] becomes one 4-column panel [in 8][out 4]: element (o, i) moves to i * 4 + o.
        let original = try XCTUnwrap(graph.constants["b.3.weight"]).data
        let result = try XCTUnwrap(packed.constants["b.3.weight"]).data
        XCTAssertEqual(result[2 * 4 + 1], original[1 * 8 + 2])
        XCTAssertEqual(packConvolutionWeight(result, conv: conv, layout: .inputOutputPanels, unpack: true), original)
    }
}
