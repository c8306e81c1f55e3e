import XCTest
@testable import MNC

final class OptimizerTests: XCTestCase {
    /// Small variants of every network keep the interpreter fast in debug builds.
    let smallCases: [(String, SpecOverrides)] = [
        ("mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("mobilenet_v3_large", SpecOverrides(widthMultiplier: 0.5, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.75, inputHeight: 64, inputWidth: 48, classes: 10)),
        ("tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 65, inputWidth: 65, classes: 10)),
        ("tf_mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 10)),
    ]

    func testFullPipelineKeepsLogits() throws {
        for (name, overrides) in smallCases {
            let graph = bindRandomWeights(to: try loadSpec(name, overrides))
            let optimized = try optimize(graph, verifyEach: true)
            let input = randomInput(count: graph.nodes[0].elementCount)
            let expected = try Interpreter(graph: graph).run(input: input)
            let actual = try Interpreter(graph: optimized).run(input: input)
            XCTAssertEqual(actual.count, expected.count, name)
            // Folding reorders float rounding; 1e-4 of the largest logit allows for it.
            XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name)
        }
    }

    func testEachPassAloneKeepsLogits() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v3_small", smallCases[3].1))
        let input = randomInput(count: graph.nodes[0].elementCount)
        let expected = try Interpreter(graph: graph).run(input: input)
        for pass in defaultPasses {
            let disabled = Set(defaultPasses.map(\.name)).subtracting([pass.name])
            let optimized = try optimize(graph, disabled: disabled, verifyEach: true)
            let actual = try Interpreter(graph: optimized).run(input: input)
            XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), pass.name)
        }
    }

    func testFusedV2HasNoStandaloneElementwiseOps() throws {
        // Without block fusion, which would merge the convolutions themselves.
        let optimized = try optimize(try loadSpec("mobilenet_v2"), disabled: ["fuse-inverted-residual"])
        let mnemonics = optimized.nodes.map(\.op.mnemonic)
        XCTAssertFalse(mnemonics.contains("bn"))
        XCTAssertFalse(mnemonics.contains("relu6"))
        XCTAssertFalse(mnemonics.contains("add"))
        XCTAssertFalse(mnemonics.contains("dropout"))
        // 1 stem + 17 blocks (2 or 3 convs each) + head conv + pool + linear.
        XCTAssertEqual(optimized.nodes.filter { $0.op.mnemonic.hasPrefix("conv") || $0.op.mnemonic.hasPrefix("depthwise") }.count, 52)
        XCTAssertTrue(optimized.nodes.contains { $0.fusedOps == ["conv1x1", "bn", "relu6"] })
        XCTAssertTrue(optimized.nodes.contains { $0.fusedOps == ["conv1x1", "bn", "add"] })
    }

    func testFusedV3HasSqueezeExcite() throws {
        // Without block fusion, which would merge the squeeze-excitations into the blocks.
        let optimized = try optimize(try loadSpec("mobilenet_v3_large"), disabled: ["fuse-inverted-residual"])
        let blocks = optimized.nodes.filter { if case .squeezeExcite = $0.op { return true } else { return false } }
        XCTAssertEqual(blocks.count, 8)
        XCTAssertFalse(optimized.nodes.contains { $0.op == .channelScale })
        XCTAssertEqual(blocks.first?.parameter("fc1.weight")?.key, "features.4.block.2.fc1.weight")
    }

    func testLevelZeroRunsNoPass() throws {
        let graph = try loadSpec("mobilenet_v2")
        let result = try optimize(graph, level: 0)
        XCTAssertEqual(result.nodes, graph.nodes)
    }

    func testUnknownDisabledPassIsRejected() throws {
        XCTAssertThrowsError(try optimize(try loadSpec("mobilenet_v2"), disabled: ["fold-bn"])) { error in
            XCTAssertTrue("\(error)".contains("unknown pass 'fold-bn'"), "\(error)")
        }
    }

    func testVerifierNamesBrokenPass() throws {
        var graph = try loadSpec("mobilenet_v2")
        graph.nodes[3].inputs = [5]
        XCTAssertThrowsError(try verify(graph, after: "example-pass")) { error in
            XCTAssertTrue("\(error)".contains("after pass 'example-pass'"), "\(error)")
            XCTAssertTrue("\(error)".contains("node 3"), "\(error)")
        }
    }
}
