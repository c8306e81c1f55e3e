import XCTest
@testable import MNC

/// Targets the LLVM backend must reject before it emits code that cannot work.
final class LLVMTargetTests: XCTestCase {
    func compileError(_ arguments: [String]) -> (Int32, String) {
        var err = ""
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mnc-llvm-target-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let status = runCommandLine(["compile", specPath("mobilenet_v3_small"), "--backend", "llvm", "-o", directory] + arguments,
                                    output: CommandOutput(write: { _ in }, writeError: { err += $0 }))
        return (status, err)
    }

    func testRejectsBigEndianTargets() {
        for triple in ["aarch64_be-linux-gnu", "mips-linux-gnu"] {
            let (status, err) = compileError(["--target", triple])
            XCTAssertEqual(status, 1, triple)
            XCTAssertEqual(err, "error: unsupported target '\(triple)': it is big-endian, and the weight blob is little-endian float32; choose a little-endian 32- or 64-bit target\n")
        }
    }

    func testRejectsSixteenBitTargets() {
        let (status, err) = compileError(["--target", "avr-none-none"])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(err, "error: unsupported target 'avr-none-none': its pointers have 16 bits, and the arena and weights need at least 32; choose a little-endian 32- or 64-bit target\n")
    }

    func testRejectsNativeCPUForOtherArchitecture() {
        let (status, err) = compileError(["--target", "aarch64-linux-gnu", "--cpu", "native"])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.hasPrefix("error: --cpu native names the host's CPU, which cannot run 'aarch64-linux-gnu'"), err)
    }

    func testRejectsEmptyCPU() {
        let (status, err) = compileError(["--cpu", ""])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(err, "error: invalid CPU name '': expected an LLVM CPU name such as x86-64, cortex-a53 or native\n")
    }

}
