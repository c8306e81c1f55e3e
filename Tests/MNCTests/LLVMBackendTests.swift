import CLLVM
import Foundation
import XCTest
@testable import MNC

/// The LLVM backend: parity with the C backend and the interpreter, the shared references,
/// LLVM's verifier on the emitted IR, cross targets, errors and the checked-in `.ll` files.
final class LLVMBackendTests: XCTestCase {
    let compiler = CCompiler(command: ["cc"])

    // MARK: - Parity

    /// One LLVM-engine run against the interpreter (on the graph before any pass) and the C
    /// backend (on the same optimized graph).
    struct ParityCase {
        var label: String
        var graph: Graph
        /// The graph pipeline's level, also LLVM's `default<On>`.
        var level: Int
        var disabled: Set<String> = []
    }

    /// Runs the cases two at a time and checks max |Δ| ≤ 1e-4 · max |logit| against both
    /// references. The interpreter runs once per distinct label.
    func checkParity(_ cases: [ParityCase]) throws {
        var references: [String: ([Float], [Float])] = [:]
        for parityCase in cases where references[parityCase.label] == nil {
            let input = randomInput(count: parityCase.graph.nodes[0].elementCount)
            references[parityCase.label] = (input, try Interpreter(graph: parityCase.graph).run(input: input))
        }
        let results = concurrentMap(cases) { parityCase -> ([Float], [Float]) in
            guard let (input, _) = references[parityCase.label] else { return ([], []) }
            let graph = try optimize(parityCase.graph, level: parityCase.level, disabled: parityCase.disabled)
            let viaC = try runGeneratedC(graph: graph, input: input, inputLayout: .nchw, compiler: self.compiler)
            let viaLLVM = try runGeneratedLLVM(graph: graph, input: input, inputLayout: .nchw,
                                               options: LLVMTargetOptions(optimizationLevel: parityCase.level), compiler: self.compiler)
            return (viaC, viaLLVM)
        }
        for (parityCase, result) in zip(cases, results) {
            let name = "\(parityCase.label) -O\(parityCase.level) \(parityCase.disabled.sorted())"
            guard let (_, expected) = references[parityCase.label] else { continue }
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)")
            case .success(let (viaC, viaLLVM)):
                XCTAssertEqual(viaLLVM.count, expected.count, name)
                XCTAssertTrue(viaLLVM.allSatisfy(\.isFinite), "\(name): non-finite logits \(viaLLVM)")
                XCTAssertLessThanOrEqual(maxAbsDifference(viaLLVM, expected), 1e-4 * maxAbs(expected), "\(name) vs interpreter")
                XCTAssertLessThanOrEqual(maxAbsDifference(viaLLVM, viaC), 1e-4 * maxAbs(viaC), "\(name) vs C")
            }
        }
    }

    /// Every spec's small variants, unfused at -O0 and fused at -O2. TF MobileNetV2 runs at an
    /// even size (asymmetric SAME padding) and an odd one, TF MobileNetV1 at the odd one.
    func testParitySmallVariants() throws {
        var cases: [ParityCase] = []
        for small in CBackendTests.smallCases where small.label != "tf-v1-64" {
            let graph = varianceKeepingWeights(try loadSpec(small.spec, small.overrides))
            cases.append(ParityCase(label: small.label, graph: graph, level: 0))
            cases.append(ParityCase(label: small.label, graph: graph, level: 2))
        }
        try checkParity(cases)
    }

    /// Whole networks at odd, non-square sizes and widths 0.5 and 0.75, fused at -O2, so that
    /// fused blocks run several bands with a partial last band, rings of several chunks with a
    /// partial last chunk, and squeeze-excitations that scale the weights or the depthwise
    /// output; V3-Small also unfused at -O0.
    func testParityOddSizes() throws {
        let specs: [(label: String, spec: String, overrides: SpecOverrides)] = [
            ("v2-121x97", "mobilenet_v2", SpecOverrides(widthMultiplier: 0.5, inputHeight: 121, inputWidth: 97, classes: 10)),
            ("tf-v2-97x76", "tf_mobilenet_v2", SpecOverrides(widthMultiplier: 0.5, inputHeight: 97, inputWidth: 76, classes: 10)),
            ("v3-small-113x87", "mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.75, inputHeight: 113, inputWidth: 87, classes: 10)),
            ("v1-75", "mobilenet_v1", SpecOverrides(widthMultiplier: 0.5, inputHeight: 75, inputWidth: 75, classes: 10)),
        ]
        var cases: [ParityCase] = []
        var schedules: [(FusedBlock, FusedBlockSchedule, outputHeight: Int)] = []
        for small in specs {
            let graph = varianceKeepingWeights(try loadSpec(small.spec, small.overrides))
            cases.append(ParityCase(label: small.label, graph: graph, level: 2))
            for node in try optimize(graph).nodes {
                if case .fusedBlock(let block) = node.op { schedules.append((block, fusedBlockSchedule(node, block), node.shape[2])) }
            }
        }
        cases.append(ParityCase(label: specs[2].label, graph: cases[2].graph, level: 0))

        // The sizes reach every branch of the streaming kernel.
        let streaming = schedules.filter { $0.1.streams }
        XCTAssertTrue(streaming.contains { $0.outputHeight / $0.1.bandRows >= 2 && $0.outputHeight % $0.1.bandRows != 0 },
                      "no block with several bands and a partial last band")
        XCTAssertTrue(streaming.contains { $0.0.expand != nil && $0.1.ringChunks > 1 && $0.0.expandedHeight % $0.1.chunkRows != 0 },
                      "no ring of several chunks with a partial last chunk")
        XCTAssertTrue(streaming.contains { $0.0.expand?.isPointwise == false }, "no streaming block with the stem as expansion")
        XCTAssertTrue(streaming.contains { $0.0.squeezeExcite != nil && $0.1.scalesWeights }, "no gate that scales the weights")
        XCTAssertTrue(streaming.contains { $0.0.squeezeExcite != nil && !$0.1.scalesWeights }, "no gate that scales the depthwise output")
        XCTAssertTrue(streaming.contains { $0.0.expand == nil }, "no streaming block without expansion")
        try checkParity(cases)
    }

    /// Fused graphs with unpacked weights, and packed graphs with the squeeze-excite block and
    /// residual adds left unfused, take the direct and element-wise kernels on fused shapes.
    /// The rare-forms graph covers grouped, strided 1×1 and asymmetrically padded
    /// convolutions, unfused BatchNorm, channel scale and ops on the input, in both input
    /// layouts, unpacked, packed only, and fully optimized.
    func testParityPartialPipelinesAndRareForms() throws {
        let v3 = CBackendTests.smallCases[3], v2 = CBackendTests.smallCases[1]
        let v3Graph = varianceKeepingWeights(try loadSpec(v3.spec, v3.overrides))
        let v2Graph = varianceKeepingWeights(try loadSpec(v2.spec, v2.overrides))
        var cases = [
            ParityCase(label: v3.label, graph: v3Graph, level: 2, disabled: ["pack-weights"]),
            ParityCase(label: v3.label, graph: v3Graph, level: 2, disabled: ["fuse-squeeze-excite"]),
            ParityCase(label: v2.label, graph: v2Graph, level: 2, disabled: ["fuse-residual-add", "fuse-activation"]),
        ]
        let packOnly = Set(defaultPasses.map(\.name)).subtracting(["pack-weights"])
        cases.append(ParityCase(label: "two-epsilons", graph: bindRandomWeights(to: twoBatchNormsGraph(), seed: 9), level: 0))
        for layout in [TensorLayout.nchw, .nhwc] {
            let graph = varianceKeepingWeights(rareFormsGraph(layout: layout))
            let label = "rare-\(layout)"
            cases.append(ParityCase(label: label, graph: graph, level: 0))
            cases.append(ParityCase(label: label, graph: graph, level: 2, disabled: packOnly))
            cases.append(ParityCase(label: label, graph: graph, level: 2))
        }
        try checkParity(cases)
    }

    /// Real torchvision weights against PyTorch's logits: 1e-4 · max |logit|.
    func testTorchParity() throws {
        let torch = try sharedDataPath("torch")
        let names = ["mobilenet_v2_1.0_224", "mobilenet_v3_large_1.0_224", "mobilenet_v3_small_1.0_224",
                     "mobilenet_v2_0.5_160_c10", "mobilenet_v3_small_0.75_128_c10"]
        let results = concurrentMap(names) { name -> ([Float], [Float]) in
            let (spec, overrides) = try torchCase(name)
            let graph = try bindWeights(path: "\(torch)/\(name)/weights.safetensors", to: try loadSpec(spec, overrides))
            let actual = try runGeneratedLLVM(graph: try optimize(graph), input: try readFloats("\(torch)/\(name)/input.f32"),
                                              inputLayout: .nchw, compiler: self.compiler)
            return (actual, try readFloats("\(torch)/\(name)/logits.f32"))
        }
        for (name, result) in zip(names, results) {
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)")
            case .success(let (actual, expected)):
                XCTAssertEqual(actual.count, expected.count, name)
                XCTAssertTrue(actual.allSatisfy(\.isFinite), name)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name)
            }
        }
    }

    /// The dequantized TFLite models on the reference photographs, NHWC input: 1e-3 absolute.
    func testTFLiteReferenceParity() throws {
        let root = try sharedDataPath("reference")
        let models: [(String, String, SpecOverrides)] = [
            ("mobilenet_v1_0.25_128_quant", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.25, inputHeight: 128, inputWidth: 128)),
            ("mobilenet_v1_0.5_160_quant", "tf_mobilenet_v1", SpecOverrides(widthMultiplier: 0.5, inputHeight: 160, inputWidth: 160)),
            ("mobilenet_v2_1.0_224_quant", "tf_mobilenet_v2", SpecOverrides()),
        ]
        let results = concurrentMap(models) { model, spec, overrides -> [(String, [Float], [Float])] in
            let graph = try optimize(try bindWeights(path: try sharedDataPath("models/\(model).tflite"), to: try loadSpec(spec, overrides)))
            let executable = try buildLLVMExecutable(graph: graph, compiler: self.compiler)
            let directory = "\(root)/\(model)"
            let images = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".input.f32") }.sorted()
            return try images.map { file in
                let image = String(file.dropLast(".input.f32".count))
                let logits = try executable.run(input: try readFloats("\(directory)/\(file)"), inputLayout: .nhwc)
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

    // MARK: - LLVM's verifier

    /// The `.ll` and `.bc` files that `mnc compile` writes parse back into LLVM and pass its
    /// verifier, and so do the checked-in `Generated/` files. A module with a broken
    /// instruction fails the same check, so the check can fail.
    func testEmittedIRPassesVerifier() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-verify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for emit in ["llvm-ir", "bitcode"] {
            let (status, _, errors) = runMNC(["compile", specPath("mobilenet_v3_small")] + smallOptions
                                             + ["--backend", "llvm", "--emit", emit, "-O0", "-o", directory])
            XCTAssertEqual(status, 0, errors)
        }
        var paths = [directory + "/mobilenet_v3_small.ll", directory + "/mobilenet_v3_small.bc"]
        paths += CBackendTests.specNames.map { packageRoot.appendingPathComponent("Generated/\($0)/\($0).ll").path }
        for path in paths {
            XCTAssertNil(try parseAndVerify(contentsOf: path), path)
        }

        let text = try String(contentsOfFile: directory + "/mobilenet_v3_small.ll", encoding: .utf8)
        let broken = text.replacingOccurrences(of: "ret i32 0", with: "ret i32 %weights")
        XCTAssertNotEqual(broken, text)
        try writeFile(directory + "/broken.ll", Array(broken.utf8))
        XCTAssertNotNil(try parseAndVerify(contentsOf: directory + "/broken.ll"))
    }

    /// Parses IR text or bitcode with LLVM and runs its verifier; returns the first error, or
    /// nil for a valid module.
    func parseAndVerify(contentsOf path: String) throws -> String? {
        let context = LLVMContextCreate()
        defer { LLVMContextDispose(context) }
        var buffer: LLVMMemoryBufferRef?
        var message: UnsafeMutablePointer<CChar>?
        guard LLVMCreateMemoryBufferWithContentsOfFile(path, &buffer, &message) == 0, let buffer else {
            return "cannot read: " + takeLLVMString(message)
        }
        var module: LLVMModuleRef?
        // LLVMParseIRInContext reads both text and bitcode and takes ownership of the buffer.
        guard LLVMParseIRInContext(context, buffer, &module, &message) == 0, let module else {
            return "cannot parse: " + takeLLVMString(message)
        }
        defer { LLVMDisposeModule(module) }
        if LLVMVerifyModule(module, LLVMReturnStatusAction, &message) != 0 {
            return "invalid: " + takeLLVMString(message)
        }
        LLVMDisposeMessage(message)
        return nil
    }

    // MARK: - Generated/

    /// `Generated/NAME/NAME.ll` is the optimized IR of every spec at default options for
    /// generic x86-64, and `NAME.h` is the C backend's header for it.
    func testGeneratedIRIsCurrent() throws {
        let results = concurrentMap(CBackendTests.specNames) { spec -> (String, String) in
            let network = try generateLLVM(try optimize(try loadSpec(spec)), target: .genericX86_64)
            return (network.irText, network.generatedC.header)
        }
        for (spec, result) in zip(CBackendTests.specNames, results) {
            switch result {
            case .failure(let error):
                XCTFail("\(spec): \(error)")
            case .success(let (ir, header)):
                for (file, text) in [("\(spec).ll", ir), ("\(spec).h", header)] {
                    let path = packageRoot.appendingPathComponent("Generated/\(spec)/\(file)").path
                    let stored = FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
                    XCTAssertNotNil(stored, "Generated/\(spec)/\(file) is missing: run `make generate`")
                    XCTAssertTrue(stored == text, "Generated/\(spec)/\(file) is stale: run `make generate`")
                }
            }
        }
    }

    // MARK: - Artifacts

    /// A C caller links the LLVM backend's static library and shared library: the argument
    /// checks return the C backend's codes, the info struct matches the header's macros, and
    /// a run with the embedded weights matches the interpreter. The header is byte for byte
    /// the C backend's.
    func testLibrariesWithCCaller() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-libraries")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let small = CBackendTests.smallCases[6]
        let graph = varianceKeepingWeights(try loadSpec(small.spec, small.overrides), seed: 5)
        let input = randomInput(count: graph.nodes[0].elementCount, seed: 6)
        let expected = try Interpreter(graph: graph).run(input: input)
        // This TF-style network reads NHWC input.
        try writeFile(directory + "/input.f32", littleEndianBytes(reorder(input, channels: 3, height: 64, width: 64, from: .nchw, to: .nhwc)))
        try writeFile(directory + "/caller.c", Array(callerSource.utf8))

        let optimized = try optimize(graph)
        let staticDirectory = directory + "/static", sharedDirectory = directory + "/shared"
        try writeLLVMCompiledNetwork(try generateLLVM(optimized, name: "net", target: LLVMTargetOptions()), emit: .staticLibrary,
                                     directory: staticDirectory, compiler: compiler)
        try writeLLVMCompiledNetwork(try generateLLVM(optimized, name: "net", target: LLVMTargetOptions()), emit: .sharedLibrary,
                                     directory: sharedDirectory, compiler: compiler)
        let header = try String(contentsOfFile: staticDirectory + "/net.h", encoding: .utf8)
        XCTAssertEqual(header, try generateC(optimized, name: "net").header)
        let archive = try Data(contentsOf: URL(fileURLWithPath: staticDirectory + "/libnet.a"))
        XCTAssertEqual(String(decoding: archive.prefix(8), as: UTF8.self), "!<arch>\n")

        let builds: [(String, [String])] = [
            ("static", [directory + "/caller.c", staticDirectory + "/libnet.a", "-I", staticDirectory]),
            ("shared", [directory + "/caller.c", "-I", sharedDirectory, "-L", sharedDirectory, "-lnet", "-Wl,-rpath," + sharedDirectory]),
        ]
        for (label, arguments) in builds {
            let executable = directory + "/caller_" + label
            try compiler.linkExecutable(sources: arguments, output: executable)
            let (status, output) = try runProcess([executable, directory + "/input.f32", directory + "/\(label).f32"])
            XCTAssertEqual(status, 0, "\(label): \(output)")
            XCTAssertTrue(output.contains("caller: checks passed"), "\(label): \(output)")
            let actual = try readFloats(directory + "/\(label).f32")
            XCTAssertEqual(actual.count, expected.count, label)
            XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), label)
        }
    }

    /// `--emit executable` links the standalone classifier around the LLVM object. On a PPM
    /// image the test writes, its top-5 classes and softmax scores match the interpreter's on
    /// the same preprocessed input.
    func testClassifierExecutable() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-classifier")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let small = CBackendTests.smallCases[3]
        let graph = varianceKeepingWeights(try loadSpec(small.spec, small.overrides), seed: 8)
        let network = try generateLLVM(try optimize(graph), name: "classifier", target: LLVMTargetOptions())
        let written = try writeLLVMCompiledNetwork(network, emit: .executable, directory: directory, compiler: compiler)
        XCTAssertEqual(written.last, directory + "/classifier")

        // A 40 × 30 RGB gradient as binary PPM.
        var image = Array("P6\n40 30\n255\n".utf8)
        for y in 0..<30 {
            for x in 0..<40 {
                image += [UInt8(x * 6), UInt8(y * 8), UInt8((x + y) * 3)]
            }
        }
        try writeFile(directory + "/image.ppm", image)
        let (status, output) = try runProcess([directory + "/classifier", directory + "/image.ppm", "--json", "--top", "5"])
        XCTAssertEqual(status, 0, output)

        let shape = graph.inputShape
        let input = try loadPreprocessedImage(path: directory + "/image.ppm", height: shape[2], width: shape[3],
                                              preprocessing: graphPreprocessing(graph, layout: .nchw))
        let logits = try Interpreter(graph: graph).run(input: input)
        let maximum = try XCTUnwrap(logits.max())
        let exponentials = logits.map { exp(Double($0 - maximum)) }
        let total = exponentials.reduce(0, +)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]])
        let top = try XCTUnwrap(json.first?["top"] as? [[String: Any]])
        XCTAssertEqual(top.count, 5)
        for entry in top {
            let index = try XCTUnwrap(entry["index"] as? Int)
            let score = try XCTUnwrap(entry["score"] as? Double)
            XCTAssertEqual(score, exponentials[index] / total, accuracy: 1e-4, "class \(index)")
        }
        let best = try XCTUnwrap(top.first?["index"] as? Int)
        XCTAssertEqual(best, logits.indices.max { logits[$0] < logits[$1] })
    }

    /// `Examples/classify.c` builds with its Makefile against the LLVM backend's static
    /// library (made with --random-weights) and prints the interpreter's top class and logit.
    func testExampleLinksStaticLibrary() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-example")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let overrides = ["--width-multiplier", "0.5", "--resolution", "64", "--classes", "4"]
        let (status, _, errors) = runMNC(["compile", specPath("mobilenet_v3_large"), "--random-weights", "--backend", "llvm",
                                          "--emit", "static-lib", "-o", directory] + overrides)
        XCTAssertEqual(status, 0, errors)
        let (makeStatus, makeOutput) = try runProcess(["make", "-s", "-C", packageRoot.appendingPathComponent("Examples").path,
                                                       "MODEL=mobilenet_v3_large", "BUILD=\(directory)"])
        XCTAssertEqual(makeStatus, 0, makeOutput)

        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v3_large",
                                                       SpecOverrides(widthMultiplier: 0.5, inputHeight: 64, inputWidth: 64, classes: 4)))
        let input = randomInput(count: 3 * 64 * 64)
        try writeFile(directory + "/input.f32", littleEndianBytes(input))
        let logits = try Interpreter(graph: graph).run(input: input)
        let best = try XCTUnwrap(logits.indices.max { logits[$0] < logits[$1] })

        let (runStatus, output) = try runProcess([directory + "/classify", directory + "/input.f32"])
        XCTAssertEqual(runStatus, 0, output)
        let fields = output.split(whereSeparator: { $0 == " " || $0 == "\n" })
        XCTAssertEqual(fields.count, 4, output)
        XCTAssertEqual(fields.count == 4 ? Int(fields[1]) : nil, best, output)
        let logit = fields.count == 4 ? Float(fields[3]) ?? .nan : .nan
        XCTAssertEqual(logit, logits[best], accuracy: 1e-4 * maxAbs(logits), output)
    }

    // MARK: - Cross targets

    /// An aarch64 build linked with the cross compiler runs under QEMU and matches the
    /// host build's logits: 1e-4 · max |logit|.
    func testAArch64UnderQEMU() throws {
        for tool in ["aarch64-linux-gnu-gcc", "qemu-aarch64"] {
            guard (try? runProcess(["which", tool]))?.status == 0 else {
                throw XCTSkip("\(tool) not found: run Scripts/install-deps.sh (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user)")
            }
        }
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-aarch64")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let small = CBackendTests.smallCases[1]
        let graph = try optimize(varianceKeepingWeights(try loadSpec(small.spec, small.overrides), seed: 3))
        let input = randomInput(count: graph.nodes[0].elementCount, seed: 4)
        let host = try runGeneratedLLVM(graph: graph, input: input, inputLayout: .nchw, compiler: compiler)

        let network = try generateLLVM(graph, target: LLVMTargetOptions(triple: "aarch64-linux-gnu"))
        XCTAssertEqual(network.triple, "aarch64-unknown-linux-gnu")
        let names = network.names
        try writeFile(directory + "/" + names.headerFile, Array(network.generatedC.header.utf8))
        try writeFile(directory + "/driver.c", Array(driverSource(names).utf8))
        try writeFile(directory + "/weights.bin", network.generatedC.weightBlob ?? [])
        try writeFile(directory + "/input.f32", littleEndianBytes(input))
        try network.writeObject(to: directory + "/net.o", includeWeights: false)
        let cross = llvmLinkingToolchain(for: network.target, environment: [:])
        XCTAssertEqual(cross.command, ["aarch64-linux-gnu-gcc"])
        try cross.linkExecutable(sources: [directory + "/driver.c", directory + "/net.o"], output: directory + "/driver")
        let (status, output) = try runProcess(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", directory + "/driver",
                                               directory + "/weights.bin", directory + "/input.f32", directory + "/output.f32"])
        XCTAssertEqual(status, 0, output)
        let actual = try readFloats(directory + "/output.f32")
        XCTAssertEqual(actual.count, host.count)
        XCTAssertLessThanOrEqual(maxAbsDifference(actual, host), 1e-4 * maxAbs(host))
    }

    /// 32-bit ARM objects: armv7 Linux with hard float and a Cortex-M4 (thumbv7em) without an
    /// OS. Each is a 32-bit little-endian ELF relocatable for EM_ARM (40).
    func testARMObjects() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-arm")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let targets = [("armv7", ["--target", "armv7-linux-gnueabihf"]),
                       ("thumbv7em", ["--target", "thumbv7em-none-eabi", "--cpu", "cortex-m4"])]
        for (label, options) in targets {
            let output = directory + "/" + label
            let (status, _, errors) = runMNC(["compile", specPath("mobilenet_v1")] + smallOptions
                                             + ["--backend", "llvm", "--emit", "object", "-o", output] + options)
            XCTAssertEqual(status, 0, "\(label): \(errors)")
            let object = [UInt8](try Data(contentsOf: URL(fileURLWithPath: output + "/mobilenet_v1.o")))
            XCTAssertGreaterThan(object.count, 52, label)
            XCTAssertEqual(Array(object.prefix(4)), [0x7F, 0x45, 0x4C, 0x46], "\(label): ELF magic")
            XCTAssertEqual(object[4], 1, "\(label): ELFCLASS32")
            XCTAssertEqual(object[5], 1, "\(label): little-endian")
            XCTAssertEqual(UInt16(object[16]) | UInt16(object[17]) << 8, 1, "\(label): ET_REL")
            XCTAssertEqual(UInt16(object[18]) | UInt16(object[19]) << 8, 40, "\(label): EM_ARM")
        }
    }

    /// The host's triple with another vendor still counts as the host, so its code can run.
    func testHostTripleWithOtherVendor() throws {
        let host = try LLVMTarget(LLVMTargetOptions())
        let parts = host.triple.split(separator: "-").map(String.init)
        guard parts.count >= 3 else { throw XCTSkip("host triple '\(host.triple)' has no vendor component") }
        let vendor = parts[1] == "unknown" ? "pc" : "unknown"
        let other = ([parts[0], vendor] + parts[2...]).joined(separator: "-")
        XCTAssertTrue(host.isHost)
        XCTAssertTrue(try LLVMTarget(LLVMTargetOptions(triple: other)).isHost, other)
        XCTAssertFalse(try LLVMTarget(LLVMTargetOptions(triple: "riscv64-unknown-linux-gnu")).isHost)
    }

    func testToolPrefixes() {
        XCTAssertEqual(gnuToolPrefix(triple: "aarch64-unknown-linux-gnu"), "aarch64-linux-gnu")
        XCTAssertEqual(gnuToolPrefix(triple: "armv7-unknown-linux-gnueabihf"), "arm-linux-gnueabihf")
        XCTAssertEqual(gnuToolPrefix(triple: "thumbv7em-none-unknown-eabi"), "arm-none-eabi")
    }

    // MARK: - Errors

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

    let smallOptions = ["--width-multiplier", "0.25", "--resolution", "32", "--classes", "10"]

    func compileArguments(_ extra: [String], backend: String = "llvm", directory: String = "/tmp/mnc-llvm-unused") -> [String] {
        ["compile", specPath("mobilenet_v1")] + smallOptions + ["--backend", backend, "-o", directory] + extra
    }

    func testUnknownTriple() {
        assertOneLineError(compileArguments(["--target", "foo-bar-baz"]),
                           contains: "unknown target triple 'foo-bar-baz': No available targets are compatible with triple")
    }

    func testUnknownCPU() {
        assertOneLineError(compileArguments(["--cpu", "no-such-cpu"]),
                           contains: "'no-such-cpu' is not a recognized processor for this target")
        assertOneLineError(compileArguments(["--target", "aarch64-linux-gnu", "--cpu", "skylake"]),
                           contains: "unknown CPU 'skylake' for target 'aarch64-unknown-linux-gnu'")
    }

    func testUnknownFeature() {
        assertOneLineError(compileArguments(["--features", "+no-such-feature"]),
                           contains: "'+no-such-feature' is not a recognized feature for this target")
        assertOneLineError(compileArguments(["--target", "aarch64-linux-gnu", "--features", "+avx2"]),
                           contains: "'+avx2' is not a recognized feature")
        assertOneLineError(compileArguments(["--features", "avx2"]),
                           contains: "invalid feature 'avx2' in --features 'avx2': expected a comma-separated list of +NAME or -NAME")
    }

    func testOptionMisuse() {
        assertOneLineError(["compile", specPath("mobilenet_v1")] + smallOptions + ["--target", "aarch64-linux-gnu", "-o", "/tmp/mnc-llvm-unused"],
                           contains: "--target applies to the LLVM backend only")
        assertOneLineError(compileArguments(["--emit", "c"]), contains: "invalid value 'c' for --emit")
        assertOneLineError(compileArguments([], backend: "gcc"), contains: "invalid value 'gcc' for --backend")
        assertOneLineError(compileArguments(["--emit", "executable"]), contains: "--emit executable embeds the weights")
    }

    /// Without a cross compiler on PATH, linking an aarch64 library fails with one line that
    /// names the missing tool.
    func testMissingCrossCompiler() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-cross")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try withEnvironment(["CC": "mnc-no-such-cross-gcc"]) {
            assertOneLineError(compileArguments(["--target", "aarch64-linux-gnu", "--emit", "shared-lib"], directory: directory),
                               contains: "'mnc-no-such-cross-gcc' not found")
        }
    }

    /// `mnc run --engine llvm` writes the interpreter engine's logits within 1e-4 · max |logit|
    /// and prints five classes led by the same one.
    func testRunEngine() throws {
        let weights = try sharedDataPath("torch/mobilenet_v3_small_0.75_128_c10/weights.safetensors")
        let input = try sharedDataPath("torch/mobilenet_v3_small_0.75_128_c10/input.f32")
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-engine")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let options = ["--width-multiplier", "0.75", "--resolution", "128", "--classes", "10"]
        let arguments = ["run", specPath("mobilenet_v3_small")] + options + ["--weights", weights, "--input", input]
        let (status, output, errors) = runMNC(arguments + ["--engine", "llvm", "--output", directory + "/llvm.f32"])
        XCTAssertEqual(status, 0, errors)
        let (referenceStatus, reference, referenceErrors) = runMNC(arguments + ["--output", directory + "/interpreter.f32"])
        XCTAssertEqual(referenceStatus, 0, referenceErrors)

        let actual = try readFloats(directory + "/llvm.f32"), expected = try readFloats(directory + "/interpreter.f32")
        XCTAssertEqual(actual.count, 10)
        XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected))
        XCTAssertEqual(output.split(separator: "\n").count, 5)
        XCTAssertEqual(output.split(separator: " ", omittingEmptySubsequences: true).first,
                       reference.split(separator: " ", omittingEmptySubsequences: true).first)
    }
}

/// Builds input [1, 4, 3, 3] → ReLU → BatchNorm (epsilon 1e-3) → BatchNorm (epsilon 2) →
/// pool → linear 4 → 3: two BatchNorm kernels on NHWC values of one shape that differ only
/// in epsilon.
func twoBatchNormsGraph() -> Graph {
    var nodes: [Node] = []
    func add(_ op: Op, _ inputs: [Int], _ shape: [Int], _ roles: [(String, [Int])] = []) -> Int {
        let name = "n\(nodes.count)"
        let parameters = roles.map { Parameter(role: $0.0, key: "\(name).\($0.0)", shape: $0.1) }
        nodes.append(Node(op: op, inputs: inputs, shape: shape, parameters: parameters, name: name, layer: name))
        return nodes.count - 1
    }
    let statistics = ["weight", "bias", "running_mean", "running_var"].map { ($0, [4]) }
    let input = add(.input, [], [1, 4, 3, 3])
    let rectified = add(.activation(.relu), [input], [1, 4, 3, 3])
    let first = add(.batchNorm(epsilon: 1e-3), [rectified], [1, 4, 3, 3], statistics)
    let second = add(.batchNorm(epsilon: 2), [first], [1, 4, 3, 3], statistics)
    let pooled = add(.globalAveragePool, [second], [1, 4, 1, 1])
    let flat = add(.flatten, [pooled], [1, 4])
    let output = add(.linear(Linear(inFeatures: 4, outFeatures: 3, hasBias: true)), [flat], [1, 3],
                     [("weight", [3, 4]), ("bias", [3])])
    return Graph(name: "two_epsilons", nodes: nodes, output: output, preprocessing: Preprocessing())
}

/// The C caller of the library test: `caller INPUT OUTPUT` checks the argument checks and the
/// info struct, runs `net` with its embedded weights and writes the logits.
private let callerSource = #"""
#define _POSIX_C_SOURCE 200112L
#include "net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

int main(int argc, char **argv)
{
    if (argc != 3) FAIL("usage: caller INPUT OUTPUT");
    float *input = NULL, *output = NULL;
    unsigned char *arena = NULL;
    if (posix_memalign((void **)&input, 64, NET_INPUT_SIZE * sizeof(float)) != 0
        || posix_memalign((void **)&output, 64, NET_OUTPUT_SIZE * sizeof(float)) != 0
        || posix_memalign((void **)&arena, 64, NET_ARENA_SIZE + 64) != 0) FAIL("out of memory");
    FILE *file = fopen(argv[1], "rb");
    if (file == NULL || fread(input, sizeof(float), NET_INPUT_SIZE, file) != NET_INPUT_SIZE) FAIL("cannot read %s", argv[1]);
    fclose(file);

    if (net_run(NULL, input, output, arena) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL weights accepted");
    if (net_run(net_weights, NULL, output, arena) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL input accepted");
    if (net_run(net_weights, input, NULL, arena) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL output accepted");
    if (net_run(net_weights, input, output, NULL) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL arena accepted");
    if (net_run(net_weights, input, output, arena + 4) != NET_ERROR_MISALIGNED_ARGUMENT) FAIL("misaligned arena accepted");
    if (net_run(net_weights + 4, input, output, arena) != NET_ERROR_MISALIGNED_ARGUMENT) FAIL("misaligned weights accepted");
    if (net_run(net_weights, (const float *)((const char *)input + 1), output, arena) != NET_ERROR_MISALIGNED_ARGUMENT)
        FAIL("misaligned input accepted");
    if (net_run(net_weights, input, (float *)((char *)output + 2), arena) != NET_ERROR_MISALIGNED_ARGUMENT)
        FAIL("misaligned output accepted");

    const net_info *info = net_get_info();
    if (strcmp(info->name, "tf_mobilenet_v2") != 0) FAIL("name %s", info->name);
    if (info->input_channels != NET_INPUT_CHANNELS || info->input_height != NET_INPUT_HEIGHT
        || info->input_width != NET_INPUT_WIDTH || info->input_size != NET_INPUT_SIZE) FAIL("input sizes differ");
    if (strcmp(info->input_layout, "NHWC") != 0 || strcmp(info->channel_order, "RGB") != 0) FAIL("layout or channel order differs");
    if (info->output_size != NET_OUTPUT_SIZE || info->arena_size != NET_ARENA_SIZE || info->arena_alignment != NET_ARENA_ALIGNMENT
        || info->weights_size != NET_WEIGHTS_SIZE || info->weights_alignment != NET_WEIGHTS_ALIGNMENT
        || info->weights_size != net_weights_size) FAIL("sizes differ");
    if (info->mean[0] != NET_MEAN_R || info->mean[1] != NET_MEAN_G || info->mean[2] != NET_MEAN_B
        || info->std[0] != NET_STD_R || info->std[1] != NET_STD_G || info->std[2] != NET_STD_B) FAIL("mean or std differs");
    if (info->resize_shorter_side != NET_RESIZE_SHORTER_SIDE || info->crop_fraction != NET_CROP_FRACTION) FAIL("resize differs");

    memset(arena, 0xFF, NET_ARENA_SIZE);
    if (net_run(net_weights, input, output, arena) != NET_OK) FAIL("net_run failed");
    file = fopen(argv[2], "wb");
    if (file == NULL || fwrite(output, sizeof(float), NET_OUTPUT_SIZE, file) != NET_OUTPUT_SIZE || fclose(file) != 0)
        FAIL("cannot write %s", argv[2]);
    printf("caller: checks passed\n");
    return 0;
}
"""#
