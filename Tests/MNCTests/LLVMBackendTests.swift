import CLLVM
import Foundation
import XCTest
@testable import MNC

/// The LLVM backend: parity with the C backend and the interpreter, the shared references,
/// LLVM's verifier on the emitted IR, cross targets, errors and the checked-in `.ll` files.
final class LLVMBackendTests: XCTestCase {
    let compiler = CCompiler(command: ["cc"])

    // MARK: - Parity

    /// Every small variant at -O0 (no graph pass, LLVM's default<O0>) and -O2 through the
    /// LLVM engine, against the interpreter and the C backend on the same graph:
    /// max |Δ| ≤ 1e-4 · max |logit| for both.
    func testParitySmallVariants() throws {
        var cases: [(label: String, graph: Graph, level: Int)] = []
        for small in CBackendTests.smallCases where small.label != "tf-v1-64" {
            let graph = varianceKeepingWeights(try loadSpec(small.spec, small.overrides))
            cases.append((small.label, graph, 0))
            cases.append((small.label, graph, 2))
        }
        let results = concurrentMap(cases) { testCase -> ([Float], [Float], [Float]) in
            let graph = try optimize(testCase.graph, level: testCase.level)
            let input = randomInput(count: graph.nodes[0].elementCount)
            let expected = try Interpreter(graph: testCase.graph).run(input: input)
            let viaC = try runGeneratedC(graph: graph, input: input, inputLayout: .nchw, compiler: self.compiler)
            let viaLLVM = try runGeneratedLLVM(graph: graph, input: input, inputLayout: .nchw,
                                               options: LLVMTargetOptions(optimizationLevel: testCase.level), compiler: self.compiler)
            return (expected, viaC, viaLLVM)
        }
        for (testCase, result) in zip(cases, results) {
            let name = "\(testCase.label) -O\(testCase.level)"
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)")
            case .success(let (expected, viaC, viaLLVM)):
                XCTAssertEqual(viaLLVM.count, expected.count, name)
                XCTAssertTrue(viaLLVM.allSatisfy(\.isFinite), "\(name): non-finite logits \(viaLLVM)")
                XCTAssertLessThanOrEqual(maxAbsDifference(viaLLVM, expected), 1e-4 * maxAbs(expected), "\(name) vs interpreter")
                XCTAssertLessThanOrEqual(maxAbsDifference(viaLLVM, viaC), 1e-4 * maxAbs(viaC), "\(name) vs C")
            }
        }
    }
}
