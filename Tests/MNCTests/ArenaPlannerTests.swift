import XCTest
@testable import MNC

final class ArenaPlannerTests: XCTestCase {
    let specs = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "tf_mobilenet_v1", "tf_mobilenet_v2"]

    func testPlansVerifyAtSeveralSizes() throws {
        let variants: [SpecOverrides] = [
            SpecOverrides(),
            SpecOverrides(widthMultiplier: 0.35, inputHeight: 96, inputWidth: 96),
            SpecOverrides(widthMultiplier: 0.75, inputHeight: 161, inputWidth: 129),
            SpecOverrides(widthMultiplier: 1.4, inputHeight: 256, inputWidth: 256),
        ]
        for name in specs {
            for overrides in variants {
                for level in [0, 2] {
                    let graph = try optimize(try loadSpec(name, overrides), level: level)
                    let plan = planArena(graph, scratchBytes: { node in node.op.mnemonic == "squeeze_excite" ? 4096 : 0 })
                    XCTAssertNoThrow(try verifyPlan(plan), "\(name) -O\(level)")
                    XCTAssertGreaterThanOrEqual(plan.size, plan.lowerBound, name)
                    XCTAssertLessThanOrEqual(plan.size, plan.totalBufferBytes, name)
                }
            }
        }
    }

    func testDefaultPlansReachLowerBound() throws {
        for name in specs {
            let plan = planArena(try optimize(try loadSpec(name)))
            XCTAssertEqual(plan.size, plan.lowerBound, name)
        }
    }

    func testInputAndOutputStayOutOfArena() throws {
        let graph = try optimize(try loadSpec("tf_mobilenet_v1"))
        let plan = planArena(graph)
        XCTAssertEqual(plan.storage[0], .input)
        XCTAssertEqual(plan.storage[graph.output], .output)
        // The TF head's logits conv writes through the flatten straight into the caller's output.
        let producer = graph.nodes[graph.output].inputs[0]
        XCTAssertEqual(plan.storage[producer], .output)
        XCTAssertFalse(plan.buffers.contains { $0.node == producer || $0.node == 0 })
    }

    func testResidualKeepsBlockInputAlive() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2"))
        let plan = planArena(graph)
        var residualReaders = 0
        for (index, node) in graph.nodes.enumerated() {
            switch node.op {
            case .conv2d(let conv) where conv.hasResidual: break
            case .fusedBlock(let block) where block.project.hasResidual: break
            default: continue
            }
            residualReaders += 1
            let residual = node.inputs[1]
            let buffer = try XCTUnwrap(plan.buffers.first { $0.node == residual && !$0.isScratch })
            XCTAssertGreaterThanOrEqual(buffer.lastStep, index)
        }
        XCTAssertEqual(residualReaders, 10, "MobileNetV2 has 10 residual blocks")
    }

    func testVerifierDetectsOverlap() throws {
        var plan = planArena(try optimize(try loadSpec("mobilenet_v2")))
        let first = plan.buffers[0], second = plan.buffers[1]
        XCTAssertLessThanOrEqual(second.firstStep, first.lastStep, "the first two buffers are live together")
        plan.buffers[1].offset = first.offset
        XCTAssertThrowsError(try verifyPlan(plan)) { error in
            XCTAssertTrue("\(error)".contains("overlap"), "\(error)")
        }
    }

    func testPlanDumpDrawsEveryStep() throws {
        let graph = try optimize(try loadSpec("mobilenet_v3_small"))
        let text = planArena(graph).textDump(graph: graph)
        XCTAssertTrue(text.contains("lower bound:"))
        XCTAssertEqual(text.split(separator: "\n").filter { $0.contains("|") }.count, graph.nodes.count)
    }
}
