import XCTest
@testable import MNC

/// The interpreter against PyTorch's logits for the torchvision cases in `../shared/data/torch`.
final class TorchParityTests: XCTestCase {
    /// Binds `file` to the case's graph, runs the interpreter (unfused and fused) on `input.f32`
    /// and compares with `logits.f32`: max |Δ| ≤ 1e-4 · max |logit|.
    private func checkCase(_ name: String, weights: String) throws {
        let directory = try sharedDataPath("torch/\(name)")
        let path = "\(directory)/\(weights)"
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("\(name) has no \(weights)")
        }
        let (spec, overrides) = try torchCase(name)
        let graph = try bindWeights(path: path, to: try loadSpec(spec, overrides))
        let input = try readFloats("\(directory)/input.f32")
        let expected = try readFloats("\(directory)/logits.f32")
        let tolerance = 1e-4 * maxAbs(expected)
        let fused = try Interpreter(graph: try optimize(graph)).run(input: input)
        XCTAssertEqual(fused.count, expected.count, name)
        XCTAssertLessThanOrEqual(maxAbsDifference(fused, expected), tolerance, "\(name) fused")
        if name.contains("c10") {
            let unfused = try Interpreter(graph: graph).run(input: input)
            XCTAssertLessThanOrEqual(maxAbsDifference(unfused, expected), tolerance, "\(name) unfused")
        }
    }

    func testV2Safetensors() throws { try checkCase("mobilenet_v2_1.0_224", weights: "weights.safetensors") }
    func testV2Pth() throws { try checkCase("mobilenet_v2_1.0_224", weights: "weights.pth") }
    func testV3LargeSafetensors() throws { try checkCase("mobilenet_v3_large_1.0_224", weights: "weights.safetensors") }
    func testV3SmallSafetensors() throws { try checkCase("mobilenet_v3_small_1.0_224", weights: "weights.safetensors") }
    func testV2HalfWidthSafetensors() throws { try checkCase("mobilenet_v2_0.5_160_c10", weights: "weights.safetensors") }
    func testV2HalfWidthPth() throws { try checkCase("mobilenet_v2_0.5_160_c10", weights: "weights.pth") }
    func testV3SmallReducedSafetensors() throws { try checkCase("mobilenet_v3_small_0.75_128_c10", weights: "weights.safetensors") }
    func testV3SmallReducedPth() throws { try checkCase("mobilenet_v3_small_0.75_128_c10", weights: "weights.pth") }
}
