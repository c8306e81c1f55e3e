import XCTest
@testable import MNC

final class StateDictBindingTests: XCTestCase {
    let overrides = SpecOverrides(widthMultiplier: 0.35, inputHeight: 32, inputWidth: 32, classes: 5)

    /// The graph's random constants as a state-dict file, in node order.
    func stateDict(_ graph: Graph) -> WeightFile {
        let tensors = graph.nodes.flatMap(\.parameters).compactMap { parameter in
            graph.constants[parameter.key].map { WeightTensor(name: parameter.key, dtype: "F32", shape: $0.shape, data: $0.data) }
        }
        return WeightFile(path: "test.safetensors", format: "safetensors", tensors: tensors)
    }

    func testBindsEveryKey() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v3_small", overrides))
        var unbound = graph
        unbound.constants = [:]
        let bound = try bindStateDict(stateDict(graph), to: unbound)
        XCTAssertEqual(bound.constants, graph.constants)
    }

    func testIgnoresBatchCounters() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", overrides))
        var file = stateDict(graph)
        file.tensors.append(WeightTensor(name: "features.0.1.num_batches_tracked", dtype: "I64", shape: [], data: [7]))
        var unbound = graph
        unbound.constants = [:]
        XCTAssertNoThrow(try bindStateDict(file, to: unbound))
    }

    func testReportsAllMissingAndUnexpectedKeys() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", overrides))
        var file = stateDict(graph)
        file.tensors.removeAll { $0.name == "features.0.0.weight" || $0.name == "classifier.1.bias" }
        file.tensors.append(WeightTensor(name: "head.weight", dtype: "F32", shape: [1], data: [0]))
        XCTAssertThrowsError(try bindStateDict(file, to: graph)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.hasPrefix("error: test.safetensors does not match the graph of 'mobilenet_v2'"), message)
            XCTAssertTrue(message.contains("2 missing keys: features.0.0.weight, classifier.1.bias"), message)
            XCTAssertTrue(message.contains("1 unexpected key: head.weight"), message)
        }
    }

    func testReportsShapeMismatchWithBothShapes() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", overrides))
        var file = stateDict(graph)
        let index = try XCTUnwrap(file.tensors.firstIndex { $0.name == "classifier.1.weight" })
        file.tensors[index].shape = [1280, 5]
        XCTAssertThrowsError(try bindStateDict(file, to: graph)) { error in
            XCTAssertTrue("\(error)".contains("1 shape mismatch: 'classifier.1.weight' has shape [1280,5] in the file, the graph expects [5,1280] (layer classifier.1)"), "\(error)")
        }
    }

    func testRejectsNonFiniteWeight() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", overrides))
        var file = stateDict(graph)
        let index = try XCTUnwrap(file.tensors.firstIndex { $0.name == "features.2.conv.1.0.weight" })
        file.tensors[index].data[7] = .nan
        XCTAssertThrowsError(try bindStateDict(file, to: graph)) { error in
            XCTAssertEqual("\(error)", "error: test.safetensors: tensor 'features.2.conv.1.0.weight' has a non-finite value (nan) at index 7: expected finite float32 weights")
        }
    }

    func testRejectsDuplicateKeys() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", overrides))
        var file = stateDict(graph)
        file.tensors.append(file.tensors[0])
        XCTAssertThrowsError(try bindStateDict(file, to: graph)) { error in
            XCTAssertEqual("\(error)", "error: test.safetensors: duplicate key 'features.0.0.weight'")
        }
    }
}
