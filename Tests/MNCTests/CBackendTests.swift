import Foundation
import XCTest
@testable import MNC

/// The C backend: generated code against the reference interpreter and PyTorch, warnings,
/// sanitizers, threads, the `mnc compile` command and the checked-in `Generated/` files.
final class CBackendTests: XCTestCase {
    static let specNames = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                            "tf_mobilenet_v1", "tf_mobilenet_v2"]

    /// Small variants of every network, quick in the debug-build interpreter and about a second
    /// to compile. The TF specs use SAME padding, which pads asymmetrically on even sizes and
    /// symmetrically on odd ones, so they run at both; V3-Small runs at a non-square size.
    static let smallCases: [(label: String, spec: String, overrides: SpecOverrides)] = [
        ("v1", "mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("v2", "mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("v3-large", "mobilenet_v3_large", SpecOverrides(widthMultiplier: 0.5, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("v3-small", "mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.75, inputHeight: 64, inputWidth: 48, classes: 10)),
        ("tf-v1-65", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 65, inputWidth: 65, classes: 10)),
        ("tf-v1-64", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("tf-v2-64", "tf_mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 10)),
        ("tf-v2-65", "tf_mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 65, inputWidth: 65, classes: 10)),
    ]

    static let sanitizerFlags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]

    /// A compiler that ignores CC and CFLAGS from the environment, so the tests check the defaults.
    let compiler = CCompiler(command: ["cc"])

    // MARK: - Parity with the interpreter

    /// One generated-C run compared with the interpreter on the unoptimized graph.
    struct ParityCase {
        var label: String
        var spec: String
        var overrides: SpecOverrides
        var level: Int
        var disabled: Set<String> = []
        var flags: [String] = []
    }

    /// The graph, input and interpreter logits of each small case, computed once for all tests.
    static var references: [String: (Graph, [Float], [Float])] = [:]

    /// Runs the cases two at a time and checks max |Δ| ≤ 1e-4 · max |logit| for each.
    func checkParity(_ cases: [ParityCase]) throws {
        for parityCase in cases where CBackendTests.references[parityCase.label] == nil {
            let graph = varianceKeepingWeights(try loadSpec(parityCase.spec, parityCase.overrides))
            let input = randomInput(count: graph.nodes[0].elementCount)
            CBackendTests.references[parityCase.label] = (graph, input, try Interpreter(graph: graph).run(input: input))
        }
        let references = CBackendTests.references
        let results = concurrentMap(cases) { parityCase -> [Float] in
            guard let (graph, input, _) = references[parityCase.label] else { return [] }
            let optimized = try optimize(graph, level: parityCase.level, disabled: parityCase.disabled)
            return try runGeneratedC(graph: optimized, input: input, inputLayout: .nchw, compiler: self.compiler,
                                     extraFlags: parityCase.flags)
        }
        for (parityCase, result) in zip(cases, results) {
            let name = "\(parityCase.label) -O\(parityCase.level) \(parityCase.disabled.sorted()) \(parityCase.flags.joined(separator: " "))"
            guard let (_, _, expected) = references[parityCase.label] else { continue }
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)")
            case .success(let actual):
                XCTAssertEqual(actual.count, expected.count, name)
                XCTAssertTrue(actual.allSatisfy(\.isFinite), "\(name): non-finite logits \(actual)")
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name)
            }
        }
    }

    func testParityFusedAndUnfused() throws {
        var cases: [ParityCase] = []
        for small in CBackendTests.smallCases {
            cases.append(ParityCase(label: small.label, spec: small.spec, overrides: small.overrides, level: 0))
            cases.append(ParityCase(label: small.label, spec: small.spec, overrides: small.overrides, level: 2))
        }
        try checkParity(cases)
    }

    /// Fused graphs with unpacked weights, and packed graphs with the squeeze-excite block and
    /// residual adds left unfused, take the direct and element-wise kernels on fused shapes.
    func testParityPartialPipelines() throws {
        let v3 = CBackendTests.smallCases[3], v2 = CBackendTests.smallCases[1]
        try checkParity([
            ParityCase(label: v3.label, spec: v3.spec, overrides: v3.overrides, level: 2, disabled: ["pack-weights"]),
            ParityCase(label: v3.label, spec: v3.spec, overrides: v3.overrides, level: 2, disabled: ["fuse-squeeze-excite"]),
            ParityCase(label: v2.label, spec: v2.spec, overrides: v2.overrides, level: 2, disabled: ["fuse-residual-add", "fuse-activation"]),
        ])
    }

    func testParityUnderSanitizers() throws {
        var cases = CBackendTests.distinctCases.map {
            ParityCase(label: $0.label, spec: $0.spec, overrides: $0.overrides, level: 2, flags: CBackendTests.sanitizerFlags)
        }
        let odd = CBackendTests.smallCases[4]
        cases.append(ParityCase(label: odd.label, spec: odd.spec, overrides: odd.overrides, level: 0, flags: CBackendTests.sanitizerFlags))
        try checkParity(cases)
    }

    /// The plain C kernels, which compilers without vector extensions build, under the
    /// sanitizers. These three networks together use every kernel helper.
    func testParityPlainC() throws {
        try checkParity(CBackendTests.smallCases.filter { ["v3-large", "v3-small", "tf-v1-65"].contains($0.label) }.map {
            ParityCase(label: $0.label, spec: $0.spec, overrides: $0.overrides, level: 2,
                       flags: ["-DKERNELS_SCALAR"] + CBackendTests.sanitizerFlags)
        })
    }

    /// The small cases without the even-sized TF variants, which differ from the odd-sized
    /// ones only in their padding.
    static let distinctCases = smallCases.filter { $0.label != "tf-v1-64" && $0.label != "tf-v2-64" }

    func testParityAVX512() throws {
        guard cpuFlags().contains("avx512f") else { throw XCTSkip("this CPU has no AVX-512F") }
        try checkParity(CBackendTests.distinctCases.map {
            ParityCase(label: $0.label, spec: $0.spec, overrides: $0.overrides, level: 2, flags: ["-mavx512f", "-mfma"])
        })
    }

    func testParityAVX2() throws {
        let flags = cpuFlags()
        guard flags.contains("avx2") && flags.contains("fma") else { throw XCTSkip("this CPU has no AVX2 with FMA") }
        try checkParity(CBackendTests.distinctCases.map {
            ParityCase(label: $0.label, spec: $0.spec, overrides: $0.overrides, level: 2, flags: ["-mavx2", "-mfma"])
        })
    }

    /// A NaN in the input reaches every logit, as it does in PyTorch, on every instruction-set
    /// tier, on two threads and through the LLVM backend: the activations pass a NaN through
    /// rather than clamping it to a finite value. V2 has ReLU6; V3-Small has hardswish, ReLU
    /// and squeeze-excitation gates.
    func testNaNInputReachesLogits() throws {
        let cpu = cpuFlags()
        var tiers: [[String]] = [[], ["-DKERNELS_SCALAR"]]
        if cpu.contains("avx2") && cpu.contains("fma") { tiers.append(["-mavx2", "-mfma"]) }
        if cpu.contains("avx512f") { tiers.append(["-mavx512f", "-mfma"]) }
        for small in [CBackendTests.smallCases[1], CBackendTests.smallCases[3]] {
            let graph = try optimize(bindRandomWeights(to: try loadSpec(small.spec, small.overrides)))
            var input = randomInput(count: graph.nodes[0].elementCount)
            input[input.count / 2] = .nan
            let runs = tiers.map { (flags: $0, threads: 1) } + [(flags: [], threads: 2)]
            let results = concurrentMap(runs) { run in
                try runGeneratedC(graph: graph, input: input, inputLayout: .nchw, compiler: self.compiler,
                                  extraFlags: run.flags, threads: run.threads)
            }
            for (run, result) in zip(runs, results) {
                let logits = try result.get()
                XCTAssertTrue(logits.allSatisfy(\.isNaN), "\(small.label) \(run.flags) on \(run.threads) threads: \(logits)")
            }
            let viaLLVM = try runGeneratedLLVM(graph: graph, input: input, inputLayout: .nchw, compiler: compiler)
            XCTAssertTrue(viaLLVM.allSatisfy(\.isNaN), "\(small.label) LLVM: \(viaLLVM)")
        }
    }

    /// Stems of 40 and 48 channels take the first convolution's two-vector path and then a
    /// partial or a one-vector tail (AVX-512), or several 8-channel groups (AVX2).
    func testParityWideStems() throws {
        let stems = [
            ("v1-stem40", "mobilenet_v1", SpecOverrides(widthMultiplier: 1.25, inputHeight: 40, inputWidth: 40, classes: 10)),
            ("v2-stem48", "mobilenet_v2", SpecOverrides(widthMultiplier: 1.4, inputHeight: 40, inputWidth: 40, classes: 10)),
        ]
        let cpu = cpuFlags()
        var tiers: [[String]] = []
        if cpu.contains("avx512f") { tiers.append(["-mavx512f", "-mfma"] + CBackendTests.sanitizerFlags) }
        if cpu.contains("avx2") && cpu.contains("fma") { tiers.append(["-mavx2", "-mfma"]) }
        guard !tiers.isEmpty else { throw XCTSkip("this CPU has neither AVX-512F nor AVX2 with FMA") }
        try checkParity(stems.flatMap { stem in
            tiers.map { ParityCase(label: stem.0, spec: stem.1, overrides: stem.2, level: 2, flags: $0) }
        })
    }

    /// Forms that no spec produces, in both input layouts. The graph has 1×1 convolutions with
    /// and without stride on the caller's input, a grouped and a depthwise convolution with
    /// asymmetric padding, an unfused BatchNorm, a channel scale, adds, and non-convolution ops
    /// on the input. It runs unpacked (-O0), packed only, and fully optimized.
    func testParityRareForms() throws {
        for layout in [TensorLayout.nchw, .nhwc] {
            let graph = varianceKeepingWeights(rareFormsGraph(layout: layout))
            let input = randomInput(count: graph.nodes[0].elementCount)
            let expected = try Interpreter(graph: graph).run(input: input)
            let packOnly = Set(defaultPasses.map(\.name)).subtracting(["pack-weights"])
            for (label, optimized) in [("-O0", graph), ("pack-weights", try optimize(graph, disabled: packOnly)), ("-O2", try optimize(graph))] {
                let name = "\(layout) \(label)"
                let actual = try runGeneratedC(graph: optimized, input: input, inputLayout: .nchw, compiler: compiler,
                                               extraFlags: CBackendTests.sanitizerFlags)
                XCTAssertEqual(actual.count, expected.count, name)
                XCTAssertTrue(actual.allSatisfy(\.isFinite), name)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name)
            }
        }
    }

    // MARK: - Warnings

    /// Every network at full size, fused and unfused, compiles without a warning as C99:
    /// GCC with -O2 (some warnings need the optimizer), Clang with -fsyntax-only. The
    /// intrinsics and plain C paths are checked on two networks that together use every
    /// kernel helper.
    func testGeneratedCompilesWithoutWarnings() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-warnings")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var sources: [String] = []
        for spec in CBackendTests.specNames {
            for level in [0, 2] {
                let generated = try generateC(try optimize(try loadSpec(spec), level: level), name: "\(spec)_O\(level)")
                for file in generated.files {
                    try writeFile(directory + "/" + file.name, file.contents)
                }
                sources.append(directory + "/" + generated.names.sourceFile)
            }
        }
        let strict = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
        var jobs: [(String, [String])] = sources.map { ("gcc", ["gcc", "-O2"] + strict + ["-c", $0, "-o", $0 + ".o"]) }
        let intrinsicsSources = sources.filter { $0.hasSuffix("mobilenet_v3_large_O2.c") || $0.hasSuffix("tf_mobilenet_v1_O2.c") }
        for source in intrinsicsSources {
            for isa in [["-mavx2", "-mfma"], ["-mavx512f"], ["-DKERNELS_SCALAR"]] {
                jobs.append(("gcc", ["gcc", "-O2"] + isa + strict + ["-c", source, "-o", source + ".o"]))
            }
        }
        if (try? runProcess(["clang", "--version"]))?.status == 0 {
            jobs += sources.map { ("clang", ["clang", "-fsyntax-only"] + strict + [$0]) }
            for source in intrinsicsSources {
                for isa in [["-mavx2", "-mfma"], ["-mavx512f"], ["-DKERNELS_SCALAR"]] {
                    jobs.append(("clang", ["clang", "-fsyntax-only"] + isa + strict + [source]))
                }
            }
        }
        let results = concurrentMap(jobs) { job in try runProcess(job.1) }
        for (job, result) in zip(jobs, results) {
            let command = job.1.joined(separator: " ")
            switch result {
            case .failure(let error):
                XCTFail("\(command): \(error)")
            case .success(let (status, output)):
                XCTAssertEqual(status, 0, "\(command):\n\(output)")
                XCTAssertEqual(output, "", command)
            }
        }
    }

    // MARK: - API, threads and build artifacts

    /// A C driver runs two networks and one of them twice, on three threads at once with
    /// separate arenas, and compares every result bit for bit with a sequential run. It also
    /// checks the error codes and the info struct. Network A links from the static library and
    /// B from the object file, both with their embedded weights. A second build links A from
    /// the shared library, and a third build of the sources runs under ThreadSanitizer.
    func testReentrantThreadsAndArtifacts() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-threads")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let smallA = CBackendTests.smallCases[3], smallB = CBackendTests.smallCases[6]
        let graphA = varianceKeepingWeights(try loadSpec(smallA.spec, smallA.overrides))
        let graphB = varianceKeepingWeights(try loadSpec(smallB.spec, smallB.overrides), seed: 2)
        let generatedA = try generateC(try optimize(graphA), name: "model_a")
        let generatedB = try generateC(try optimize(graphB), name: "model_b")
        let inputA = randomInput(count: graphA.nodes[0].elementCount, seed: 3)
        let inputB = randomInput(count: graphB.nodes[0].elementCount, seed: 4)
        try writeFile(directory + "/input_a.f32", littleEndianBytes(inputA))
        // Network B (TF-style) reads NHWC.
        try writeFile(directory + "/input_b.f32", littleEndianBytes(reorder(inputB, channels: 3, height: 64, width: 64, from: .nchw, to: .nhwc)))
        try writeFile(directory + "/driver.c", Array(threadDriverSource.utf8))

        let libraryA = directory + "/a_static", sharedA = directory + "/a_shared", objectB = directory + "/b_object"
        try writeCompiledNetwork(generatedA, emit: .staticLibrary, directory: libraryA, compiler: compiler)
        try writeCompiledNetwork(generatedA, emit: .sharedLibrary, directory: sharedA, compiler: compiler)
        try writeCompiledNetwork(generatedB, emit: .object, directory: objectB, compiler: compiler)
        XCTAssertTrue(FileManager.default.fileExists(atPath: libraryA + "/libmodel_a.a"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: sharedA + "/libmodel_a.so"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: objectB + "/model_b.o"))

        let includes = ["-I", libraryA, "-I", objectB, "-pthread"]
        let builds: [(String, [String])] = [
            ("static", [directory + "/driver.c", libraryA + "/libmodel_a.a", objectB + "/model_b.o"]),
            ("shared", [directory + "/driver.c", objectB + "/model_b.o", "-L", sharedA, "-lmodel_a", "-Wl,-rpath," + sharedA]),
            ("tsan", [directory + "/driver.c", libraryA + "/model_a.c", libraryA + "/model_a_weights.c",
                      objectB + "/model_b.c", objectB + "/model_b_weights.c", "-fsanitize=thread"]),
        ]
        let expectedA = try Interpreter(graph: graphA).run(input: inputA)
        let expectedB = try Interpreter(graph: graphB).run(input: inputB)
        let results = concurrentMap(builds) { build -> (Int32, String) in
            let executable = directory + "/driver_" + build.0
            try self.compiler.linkExecutable(sources: build.1, output: executable, extraFlags: includes)
            return try runProcess([executable, directory, build.0], currentDirectory: directory)
        }
        for (build, result) in zip(builds, results) {
            switch result {
            case .failure(let error):
                XCTFail("\(build.0): \(error)")
            case .success(let (status, output)):
                XCTAssertEqual(status, 0, "\(build.0): \(output)")
                XCTAssertTrue(output.contains("threads: identical results"), "\(build.0): \(output)")
                let actualA = try readFloats(directory + "/\(build.0)_a.f32")
                let actualB = try readFloats(directory + "/\(build.0)_b.f32")
                XCTAssertLessThanOrEqual(maxAbsDifference(actualA, expectedA), 1e-4 * maxAbs(expectedA), build.0)
                XCTAssertLessThanOrEqual(maxAbsDifference(actualB, expectedB), 1e-4 * maxAbs(expectedB), build.0)
            }
        }
    }

    func testWeightBlobLayout() throws {
        let graph = bindRandomWeights(to: try optimize(try loadSpec("mobilenet_v3_small", CBackendTests.smallCases[3].overrides)))
        let layout = planWeightBlob(graph)
        let keys = graph.nodes.flatMap { $0.parameters.map(\.key) }
        XCTAssertEqual(layout.entries.map(\.key), keys)
        for (entry, next) in zip(layout.entries, layout.entries.dropFirst()) {
            XCTAssertEqual(entry.offset % 64, 0, entry.key)
            XCTAssertGreaterThanOrEqual(next.offset, entry.offset + entry.count * 4, entry.key)
            XCTAssertLessThan(next.offset, entry.offset + entry.count * 4 + 64, entry.key)
        }
        XCTAssertEqual(layout.size % 64, 0)

        // Each value is its float32 bit pattern, least significant byte first.
        let blob = try serializeWeightBlob(graph, layout: layout)
        XCTAssertEqual(blob.count, layout.size)
        let last = try XCTUnwrap(layout.entries.last)
        let value = try XCTUnwrap(graph.constants[last.key]?.data.last)
        let position = last.offset + (last.count - 1) * 4
        let bits = UInt32(blob[position]) | UInt32(blob[position + 1]) << 8 | UInt32(blob[position + 2]) << 16 | UInt32(blob[position + 3]) << 24
        XCTAssertEqual(bits, value.bitPattern)
    }

    /// The embedded array and the binary blob contain the same bytes: the C compiler reads the
    /// array back out of the string literal.
    func testWeightsArrayMatchesBlob() throws {
        let graph = bindRandomWeights(to: try optimize(try loadSpec("mobilenet_v1", CBackendTests.smallCases[0].overrides)))
        let generated = try generateC(graph, name: "tiny")
        let directory = try makeTemporaryDirectory(prefix: "mnc-array")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for file in generated.files {
            try writeFile(directory + "/" + file.name, file.contents)
        }
        let dump = """
            #include "tiny.h"
            #include <stdio.h>
            int main(void)
            {
                FILE *file = fopen("dump.bin", "wb");
                if (file == NULL || fwrite(tiny_weights, 1, tiny_weights_size, file) != tiny_weights_size) return 1;
                return fclose(file) != 0;
            }

            """
        try writeFile(directory + "/dump.c", Array(dump.utf8))
        try compiler.linkExecutable(sources: [directory + "/dump.c", directory + "/tiny_weights.c"], output: directory + "/dump")
        let (status, output) = try runProcess([directory + "/dump"], currentDirectory: directory)
        XCTAssertEqual(status, 0, output)
        let dumped = try Data(contentsOf: URL(fileURLWithPath: directory + "/dump.bin"))
        XCTAssertEqual([UInt8](dumped), generated.weightBlob)
    }

    func testCodeDependsOnShapesOnly() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2", CBackendTests.smallCases[1].overrides))
        let unbound = try generateC(graph)
        let bound = try generateC(bindRandomWeights(to: graph))
        XCTAssertEqual(unbound.source, bound.source)
        XCTAssertEqual(unbound.header, bound.header)
        XCTAssertNil(unbound.weightBlob)
        XCTAssertNil(unbound.weightsSource)
        XCTAssertEqual(bound.weightBlob?.count, bound.weightsSize)
    }

    func testInvalidNames() throws {
        for name in ["", "9lives", "has-dash", "int", String(repeating: "a", count: 64)] {
            XCTAssertThrowsError(try CNames(name), name) { error in
                XCTAssertTrue("\(error)".contains("invalid name"), "\(error)")
            }
        }
        XCTAssertEqual(try CNames("net_2").macro, "NET_2")
    }

    // MARK: - Generated/

    /// `Generated/` contains the code of every spec at default options and optimization.
    func testGeneratedFilesAreCurrent() throws {
        for spec in CBackendTests.specNames {
            let generated = try generateC(try optimize(try loadSpec(spec)))
            for (file, text) in [(generated.names.headerFile, generated.header), (generated.names.sourceFile, generated.source)] {
                let path = packageRoot.appendingPathComponent("Generated/\(spec)/\(file)").path
                let stored = FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
                XCTAssertNotNil(stored, "Generated/\(spec)/\(file) is missing: run `make generate`")
                XCTAssertTrue(stored == text, "Generated/\(spec)/\(file) is stale: run `make generate`")
            }
        }
    }

    // MARK: - mnc compile

    /// Runs `mnc` and returns the exit status, standard output and standard error.
    func runMNC(_ arguments: [String]) -> (Int32, String, String) {
        var standardOutput = "", standardError = ""
        let status = runCommandLine(arguments, output: CommandOutput(write: { standardOutput += $0 }, writeError: { standardError += $0 }))
        return (status, standardOutput, standardError)
    }

    func assertOneLineError(_ arguments: [String], contains expected: String, file: StaticString = #filePath, line: UInt = #line) {
        let (status, _, errors) = runMNC(arguments)
        XCTAssertEqual(status, 1, errors, file: file, line: line)
        XCTAssertTrue(errors.hasPrefix("error: "), errors, file: file, line: line)
        XCTAssertEqual(errors.filter { $0 == "\n" }.count, 1, errors, file: file, line: line)
        XCTAssertTrue(errors.contains(expected), errors, file: file, line: line)
    }

    let smallOptions = ["--width-multiplier", "0.35", "--resolution", "64", "--classes", "10"]

    func testCompileWritesSources() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-compile")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (status, output, errors) = runMNC(["compile", specPath("mobilenet_v2")] + smallOptions + ["-o", directory + "/out", "--name", "net"])
        XCTAssertEqual(status, 0, errors)
        XCTAssertTrue(output.contains("net.h"), output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/out/net.h"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/out/net.c"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/out/net.weights.bin"))
    }

    func testCompileWithoutOutputDirectory() {
        assertOneLineError(["compile", specPath("mobilenet_v2")] + smallOptions, contains: "-o DIR")
    }

    func testCompileUnknownEmit() {
        assertOneLineError(["compile", specPath("mobilenet_v2")] + smallOptions + ["--emit", "wasm", "-o", "/tmp/unused"],
                           contains: "invalid value 'wasm' for --emit")
    }

    func testCompileInvalidName() {
        assertOneLineError(["compile", specPath("mobilenet_v2")] + smallOptions + ["--name", "my-net", "-o", "/tmp/unused"],
                           contains: "invalid name 'my-net'")
    }

    /// A directory below a regular file cannot be created, even by root.
    func testCompileUnwritableDirectory() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-unwritable")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try writeFile(directory + "/file", [])
        assertOneLineError(["compile", specPath("mobilenet_v2")] + smallOptions + ["-o", directory + "/file/out"],
                           contains: "cannot create output directory")
        assertOneLineError(["compile", specPath("mobilenet_v2")] + smallOptions + ["-o", directory + "/file"],
                           contains: "it is a file")
    }

    func testCompileFailingCompiler() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-cc")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let arguments = ["compile", specPath("mobilenet_v2")] + smallOptions + ["--emit", "object", "-o", directory]
        try withEnvironment(["CC": "false"]) {
            assertOneLineError(arguments, contains: "'false' failed compiling mobilenet_v2.c: exit status 1")
        }
        try withEnvironment(["CC": "mnc-no-such-compiler"]) {
            assertOneLineError(arguments, contains: "'mnc-no-such-compiler' not found")
        }
        // The compiler's own first error line is the message.
        try withEnvironment(["CFLAGS": "-include mnc-missing-header.h"]) {
            assertOneLineError(arguments, contains: "mnc-missing-header.h")
        }
    }

    func testCompileEmitsStaticLibrary() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-emit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (status, _, errors) = runMNC(["compile", specPath("mobilenet_v3_small")] + smallOptions + ["--emit", "static-lib", "-o", directory])
        XCTAssertEqual(status, 0, errors)
        let archive = try Data(contentsOf: URL(fileURLWithPath: directory + "/libmobilenet_v3_small.a"))
        XCTAssertEqual(String(decoding: archive.prefix(8), as: UTF8.self), "!<arch>\n")
    }

    /// `--weights` writes the blob and the C array, and the object contains the array. The blob
    /// stores the classifier's bias, which no pass changes, exactly as the file does.
    func testCompileWithWeights() throws {
        let weights = try sharedDataPath("torch/mobilenet_v3_small_0.75_128_c10/weights.safetensors")
        let directory = try makeTemporaryDirectory(prefix: "mnc-weights")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let options = ["--width-multiplier", "0.75", "--resolution", "128", "--classes", "10"]
        let (status, _, errors) = runMNC(["compile", specPath("mobilenet_v3_small")] + options
                                         + ["--weights", weights, "--emit", "object", "-o", directory, "--name", "small"])
        XCTAssertEqual(status, 0, errors)
        for file in ["small.h", "small.c", "small_weights.c", "small.o"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/" + file), file)
        }
        let blob = try readFloats(directory + "/small.weights.bin")
        let graph = try optimize(try loadSpec("mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.75, inputHeight: 128, inputWidth: 128, classes: 10)))
        let layout = planWeightBlob(graph)
        XCTAssertEqual(blob.count * 4, layout.size)
        let offset = try XCTUnwrap(layout.offset(of: "classifier.3.bias")) / 4
        let expected = try XCTUnwrap(loadWeightFile(path: weights).tensors.first { $0.name == "classifier.3.bias" }).data
        XCTAssertEqual(Array(blob[offset..<offset + expected.count]), expected)
    }

    // MARK: - Real weights

    /// The generated C with real weights against PyTorch's logits for the torchvision cases.
    func testTorchParity() throws {
        let torch = try sharedDataPath("torch")
        let names = ["mobilenet_v2_1.0_224", "mobilenet_v3_large_1.0_224", "mobilenet_v3_small_1.0_224",
                     "mobilenet_v2_0.5_160_c10", "mobilenet_v3_small_0.75_128_c10"]
        let graphs = try names.map { name -> (Graph, [Float], [Float]) in
            let (spec, overrides) = try torchCase(name)
            let graph = try bindWeights(path: "\(torch)/\(name)/weights.safetensors", to: try loadSpec(spec, overrides))
            return (try optimize(graph), try readFloats("\(torch)/\(name)/input.f32"), try readFloats("\(torch)/\(name)/logits.f32"))
        }
        let results = concurrentMap(graphs) { graph, input, _ in
            try runGeneratedC(graph: graph, input: input, inputLayout: .nchw, compiler: self.compiler)
        }
        for (name, (graph, result)) in zip(names, zip(graphs, results)) {
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)")
            case .success(let actual):
                let expected = graph.2
                XCTAssertEqual(actual.count, expected.count, name)
                XCTAssertTrue(actual.allSatisfy(\.isFinite), name)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name)
            }
        }
    }

    /// The generated C with the real quantized TFLite models (dequantized) on the reference
    /// photographs: logits within 1e-3 of the float references. These networks read NHWC
    /// input, as the reference files store it.
    func testTFLiteReferenceParity() throws {
        let root = try sharedDataPath("reference")
        let models: [(String, String, SpecOverrides)] = [
            ("mobilenet_v1_0.25_128_quant", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 128, inputWidth: 128)),
            ("mobilenet_v1_0.5_160_quant", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.5, inputHeight: 160, inputWidth: 160)),
            ("mobilenet_v2_1.0_224_quant", "tf_mobilenet_v2", SpecOverrides()),
        ]
        let graphs = try models.map { model, spec, overrides in
            try optimize(try bindWeights(path: try sharedDataPath("models/\(model).tflite"), to: try loadSpec(spec, overrides)))
        }
        let results = concurrentMap(Array(zip(models, graphs))) { entry -> [(String, [Float], [Float])] in
            let ((model, _, _), graph) = entry
            let directory = "\(root)/\(model)"
            let images = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".input.f32") }.sorted()
            return try images.map { file in
                let image = String(file.dropLast(".input.f32".count))
                let logits = try runGeneratedC(graph: graph, input: try readFloats("\(directory)/\(file)"), inputLayout: .nhwc,
                                               compiler: self.compiler)
                return ("\(model) \(image)", logits, try readFloats("\(directory)/\(image).logits.f32"))
            }
        }
        for (model, result) in zip(models, results) {
            switch result {
            case .failure(let error):
                XCTFail("\(model.0): \(error)")
            case .success(let cases):
                XCTAssertEqual(cases.count, 4, model.0)
                for (name, actual, expected) in cases {
                    XCTAssertEqual(actual.count, expected.count, name)
                    XCTAssertTrue(actual.allSatisfy(\.isFinite), name)
                    XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-3, name)
                }
            }
        }
    }
}

// MARK: - Support

/// Random weights that keep activations near unit variance through the whole network.
///
/// `bindRandomWeights` draws weights from U(±1/√fan_in), which divides the variance by about
/// 3 per layer (6 after a ReLU). Deep in the network the logits then depend on the biases
/// alone, and a wrong kernel in an early layer hardly moves them. Scaling by √6 gives He-uniform
/// weights U(±√(6/fan_in)), which keep the variance through ReLU layers.
func varianceKeepingWeights(_ graph: Graph, seed: UInt64 = 1) -> Graph {
    var bound = bindRandomWeights(to: graph, seed: seed)
    for node in graph.nodes {
        for parameter in node.parameters where parameter.shape.count > 1 {
            guard var tensor = bound.constants[parameter.key] else { continue }
            tensor.data = tensor.data.map { $0 * Float(6).squareRoot() }
            bound.constants[parameter.key] = tensor
        }
    }
    return bound
}

/// Builds a graph from the ops' rarer forms, with a 4×9×9 input and 5 logits.
func rareFormsGraph(layout: TensorLayout) -> Graph {
    var nodes: [Node] = []
    func add(_ op: Op, _ inputs: [Int], _ shape: [Int], _ parameters: [(String, [Int])] = []) -> Int {
        let name = "n\(nodes.count)"
        let bound = parameters.map { Parameter(role: $0.0, key: "\(name).\($0.0)", shape: $0.1) }
        nodes.append(Node(op: op, inputs: inputs, shape: shape, parameters: bound, name: name, layer: name))
        return nodes.count - 1
    }
    func conv(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int, padding: Padding, groups: Int = 1,
              activation: Activation = .identity) -> Conv2D {
        var conv = Conv2D(inChannels: inChannels, outChannels: outChannels, kernelHeight: kernel, kernelWidth: kernel,
                          strideHeight: stride, strideWidth: stride, padding: padding, groups: groups, hasBias: true)
        conv.activation = activation
        return conv
    }
    let none = Padding(top: 0, left: 0, bottom: 0, right: 0)

    let input = add(.input, [], [1, 4, 9, 9])
    let pointwise = add(.conv2d(conv(4, 8, kernel: 1, stride: 1, padding: none, activation: .relu)), [input], [1, 8, 9, 9],
                        [("weight", [8, 4, 1, 1]), ("bias", [8])])
    let strided = add(.conv2d(conv(8, 8, kernel: 1, stride: 2, padding: none)), [pointwise], [1, 8, 5, 5],
                      [("weight", [8, 8, 1, 1]), ("bias", [8])])
    let grouped = add(.conv2d(conv(8, 8, kernel: 3, stride: 1, padding: Padding(top: 1, left: 0, bottom: 1, right: 2), groups: 2,
                                   activation: .hardsigmoidLinear)), [strided], [1, 8, 5, 5], [("weight", [8, 4, 3, 3]), ("bias", [8])])
    let sum = add(.add, [strided, grouped], [1, 8, 5, 5])
    let depthwise = add(.conv2d(conv(8, 8, kernel: 3, stride: 2, padding: Padding(top: 0, left: 1, bottom: 1, right: 0), groups: 8)),
                        [sum], [1, 8, 2, 2], [("weight", [8, 1, 3, 3]), ("bias", [8])])
    let norm = add(.batchNorm(epsilon: 1e-3), [depthwise], [1, 8, 2, 2],
                   [("weight", [8]), ("bias", [8]), ("running_mean", [8]), ("running_var", [8])])
    let swish = add(.activation(.hardswish), [norm], [1, 8, 2, 2])
    let pooled = add(.globalAveragePool, [swish], [1, 8, 1, 1])
    var classifier = Linear(inFeatures: 8, outFeatures: 5, hasBias: true)
    classifier.activation = .relu6
    let logits = add(.linear(classifier), [pooled], [1, 5], [("weight", [5, 8]), ("bias", [5])])

    // A branch of non-convolution ops on the caller's input.
    let rectified = add(.activation(.relu), [input], [1, 4, 9, 9])
    let means = add(.globalAveragePool, [input], [1, 4, 1, 1])
    let scaled = add(.channelScale, [rectified, means], [1, 4, 9, 9])
    let scaledMeans = add(.globalAveragePool, [scaled], [1, 4, 1, 1])
    let flat = add(.flatten, [scaledMeans], [1, 4])
    let side = add(.linear(Linear(inFeatures: 4, outFeatures: 5, hasBias: false)), [flat], [1, 5], [("weight", [5, 4])])
    let output = add(.add, [logits, side], [1, 5])

    var preprocessing = Preprocessing()
    preprocessing.layout = layout
    return Graph(name: "rare_forms", nodes: nodes, output: output, preprocessing: preprocessing)
}

/// Applies `body` to every item on two threads; results keep the items' order.
func concurrentMap<T, R>(_ items: [T], _ body: @escaping (T) throws -> R) -> [Result<R, Error>] {
    var results = [Result<R, Error>?](repeating: nil, count: items.count)
    let lock = NSLock()
    var next = 0
    DispatchQueue.concurrentPerform(iterations: 2) { _ in
        while true {
            lock.lock()
            let index = next
            next += 1
            lock.unlock()
            guard index < items.count else { return }
            let result = Result { try body(items[index]) }
            lock.lock()
            results[index] = result
            lock.unlock()
        }
    }
    return results.map { $0 ?? .failure(MNCError("not run")) }
}

/// Reads the CPU feature flags from /proc/cpuinfo (none where that file does not exist).
func cpuFlags() -> Set<String> {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
    return Set(line.split(separator: " ").map(String.init))
}

/// Runs `body` with environment variables set, restoring the previous values afterwards.
func withEnvironment(_ variables: [String: String], _ body: () throws -> Void) throws {
    let previous = variables.keys.map { ($0, ProcessInfo.processInfo.environment[$0]) }
    for (key, value) in variables { setenv(key, value, 1) }
    defer {
        for (key, value) in previous {
            if let value { setenv(key, value, 1) } else { unsetenv(key) }
        }
    }
    try body()
}

/// The C driver of the threads test: `driver DIRECTORY LABEL` reads input_a.f32 and
/// input_b.f32, writes LABEL_a.f32 and LABEL_b.f32 and prints "threads: identical results".
private let threadDriverSource = #"""
#define _POSIX_C_SOURCE 200112L
#include "model_a.h"
#include "model_b.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*run_function)(const void *, const float *, float *, void *);

typedef struct {
    run_function run;
    const void *weights;
    const float *input;
    float *output;
    void *arena;
    int status;
} job;

static void *run_job(void *argument)
{
    job *work = argument;
    for (int i = 0; i < 20 && work->status == 0; ++i) {
        work->status = work->run(work->weights, work->input, work->output, work->arena);
    }
    return NULL;
}

static int read_floats(const char *path, float *values, size_t count)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL) return 1;
    size_t read = fread(values, sizeof(float), count, file);
    fclose(file);
    return read != count;
}

static int write_floats(const char *directory, const char *label, const char *suffix, const float *values, size_t count)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s_%s.f32", directory, label, suffix);
    FILE *file = fopen(path, "wb");
    if (file == NULL) return 1;
    size_t written = fwrite(values, sizeof(float), count, file);
    return (fclose(file) != 0) | (written != count);
}

static void *allocate(size_t size)
{
    void *block = NULL;
    return posix_memalign(&block, 64, size) == 0 ? block : NULL;
}

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

int main(int argc, char **argv)
{
    if (argc != 3) FAIL("usage: driver DIRECTORY LABEL");
    float *input_a = allocate(MODEL_A_INPUT_SIZE * sizeof(float)), *input_b = allocate(MODEL_B_INPUT_SIZE * sizeof(float));
    float *expected_a = allocate(MODEL_A_OUTPUT_SIZE * sizeof(float)), *expected_b = allocate(MODEL_B_OUTPUT_SIZE * sizeof(float));
    char path[4096];
    snprintf(path, sizeof path, "%s/input_a.f32", argv[1]);
    if (read_floats(path, input_a, MODEL_A_INPUT_SIZE)) FAIL("cannot read %s", path);
    snprintf(path, sizeof path, "%s/input_b.f32", argv[1]);
    if (read_floats(path, input_b, MODEL_B_INPUT_SIZE)) FAIL("cannot read %s", path);

    /* Argument checks. */
    unsigned char *arena = allocate(MODEL_A_ARENA_SIZE + 64);
    if (model_a_run(NULL, input_a, expected_a, arena) != MODEL_A_ERROR_NULL_ARGUMENT) FAIL("NULL weights accepted");
    if (model_a_run(model_a_weights, input_a, expected_a, NULL) != MODEL_A_ERROR_NULL_ARGUMENT) FAIL("NULL arena accepted");
    if (model_a_run(model_a_weights, input_a, expected_a, arena + 4) != MODEL_A_ERROR_MISALIGNED_ARGUMENT) FAIL("misaligned arena accepted");
    if (model_a_run(model_a_weights, (const float *)((const char *)input_a + 1), expected_a, arena) != MODEL_A_ERROR_MISALIGNED_ARGUMENT)
        FAIL("misaligned input accepted");

    /* The info struct agrees with the macros. */
    const model_a_info *info = model_a_get_info();
    if (info->input_size != MODEL_A_INPUT_SIZE || info->output_size != MODEL_A_OUTPUT_SIZE
        || info->arena_size != MODEL_A_ARENA_SIZE || info->weights_size != MODEL_A_WEIGHTS_SIZE
        || info->weights_size != model_a_weights_size || strcmp(info->input_layout, "NCHW") != 0
        || strcmp(model_b_get_info()->input_layout, "NHWC") != 0 || info->mean[0] != MODEL_A_MEAN_R)
        FAIL("model_a_info differs from the header's macros");

    /* Sequential reference runs. */
    if (model_a_run(model_a_weights, input_a, expected_a, arena) != MODEL_A_OK) FAIL("model_a_run failed");
    void *arena_b = allocate(MODEL_B_ARENA_SIZE);
    if (model_b_run(model_b_weights, input_b, expected_b, arena_b) != MODEL_B_OK) FAIL("model_b_run failed");

    /* A, B and A again on three threads, each with its own arena and output. */
    job jobs[3] = {
        {model_a_run, model_a_weights, input_a, allocate(MODEL_A_OUTPUT_SIZE * sizeof(float)), allocate(MODEL_A_ARENA_SIZE), 0},
        {model_b_run, model_b_weights, input_b, allocate(MODEL_B_OUTPUT_SIZE * sizeof(float)), allocate(MODEL_B_ARENA_SIZE), 0},
        {model_a_run, model_a_weights, input_a, allocate(MODEL_A_OUTPUT_SIZE * sizeof(float)), allocate(MODEL_A_ARENA_SIZE), 0},
    };
    pthread_t threads[3];
    for (int i = 0; i < 3; ++i) {
        if (pthread_create(&threads[i], NULL, run_job, &jobs[i]) != 0) FAIL("pthread_create failed");
    }
    for (int i = 0; i < 3; ++i) pthread_join(threads[i], NULL);
    for (int i = 0; i < 3; ++i) {
        if (jobs[i].status != 0) FAIL("thread %d: run returned %d", i, jobs[i].status);
    }
    if (memcmp(jobs[0].output, expected_a, MODEL_A_OUTPUT_SIZE * sizeof(float)) != 0) FAIL("thread 0 differs from the sequential run");
    if (memcmp(jobs[1].output, expected_b, MODEL_B_OUTPUT_SIZE * sizeof(float)) != 0) FAIL("thread 1 differs from the sequential run");
    if (memcmp(jobs[2].output, expected_a, MODEL_A_OUTPUT_SIZE * sizeof(float)) != 0) FAIL("thread 2 differs from the sequential run");

    if (write_floats(argv[1], argv[2], "a", expected_a, MODEL_A_OUTPUT_SIZE)
        || write_floats(argv[1], argv[2], "b", expected_b, MODEL_B_OUTPUT_SIZE)) FAIL("cannot write the outputs");
    printf("threads: identical results\n");
    return 0;
}
"""#
