import Foundation
import XCTest
@testable import MNC

final class SpecTests: XCTestCase {
    // MARK: - Totals against the reference models

    func testTotalsMatchReferenceModels() throws {
        // Trainable parameters and MACs of torchvision's models and of MobileNetV1.
        let cases: [(String, Int, Int)] = [
            ("mobilenet_v2", 3_504_872, 300_774_272),
            ("mobilenet_v3_large", 5_483_032, 216_589_760),
            ("mobilenet_v3_small", 2_542_856, 56_510_400),
            ("mobilenet_v1", 4_231_976, 568_740_352),
        ]
        for (name, parameters, macs) in cases {
            let graph = try loadSpec(name)
            XCTAssertEqual(graph.trainableParameterCount, parameters, name)
            XCTAssertEqual(graph.multiplyAccumulates, macs, name)
        }
    }

    func testTotalsMatchTorchCases() throws {
        let root = try sharedDataPath("torch")
        let cases = try FileManager.default.contentsOfDirectory(atPath: root).sorted()
        XCTAssertFalse(cases.isEmpty)
        for name in cases {
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(root)/\(name)/case.json"))) as? [String: Any]
            let (spec, overrides) = try torchCase(name)
            let graph = try loadSpec(spec, overrides)
            XCTAssertEqual(graph.trainableParameterCount, json?["parameters"] as? Int, name)
            XCTAssertEqual(graph.multiplyAccumulates, json?["macs"] as? Int, name)
        }
    }

    func testParameterKeysAreTorchvisionKeys() throws {
        let graph = try loadSpec("mobilenet_v3_large")
        let keys = Set(graph.nodes.flatMap { $0.parameters.map(\.key) })
        XCTAssertTrue(keys.contains("features.0.0.weight"))
        XCTAssertTrue(keys.contains("features.4.block.2.fc1.bias"))
        XCTAssertTrue(keys.contains("classifier.3.weight"))
        XCTAssertTrue(keys.contains("features.16.1.running_var"))
        let v2 = try loadSpec("mobilenet_v2")
        let v2Keys = Set(v2.nodes.flatMap { $0.parameters.map(\.key) })
        XCTAssertTrue(v2Keys.contains("features.1.conv.1.weight"))
        XCTAssertTrue(v2Keys.contains("features.2.conv.0.0.weight"))
        XCTAssertTrue(v2Keys.contains("classifier.1.weight"))
    }

    func testMakeDivisibleMatchesTorchvision() {
        // Values from torchvision's _make_divisible(v, 8).
        XCTAssertEqual(makeDivisible(32 * 0.5, divisor: 8), 16)
        XCTAssertEqual(makeDivisible(16 * 0.35, divisor: 8), 8)
        XCTAssertEqual(makeDivisible(96 * 0.35, divisor: 8), 32)
        XCTAssertEqual(makeDivisible(24 * 0.75, divisor: 8), 24)
        XCTAssertEqual(makeDivisible(40 * 0.75, divisor: 8), 32)
        // 0.9 rule: 20 rounds to 16 (80% of 20), so it is bumped to 24.
        XCTAssertEqual(makeDivisible(20, divisor: 8), 24)
        XCTAssertEqual(ChannelRounding.floor(minimum: 8).apply(32 * 0.25), 8)
        XCTAssertEqual(ChannelRounding.floor(minimum: 8).apply(1024 * 0.25), 256)
    }

    func testSamePaddingPadsAfterOnEvenSizes() throws {
        let graph = try loadSpec("tf_mobilenet_v2")
        guard case .conv2d(let stem) = graph.nodes[1].op else { return XCTFail("node 1 is not the stem conv") }
        XCTAssertEqual(stem.padding, Padding(top: 0, left: 0, bottom: 1, right: 1))
        XCTAssertEqual(graph.nodes[1].shape, [1, 32, 112, 112])
    }

    func testNonSquareInput() throws {
        let graph = try loadSpec("mobilenet_v2", SpecOverrides(inputHeight: 224, inputWidth: 160))
        XCTAssertEqual(graph.nodes[1].shape, [1, 32, 112, 80])
    }

    func testReducedTailHalvesLastStage() throws {
        let text = try String(contentsOfFile: specPath("mobilenet_v3_large"), encoding: .utf8)
            .replacingOccurrences(of: "network mobilenet_v3_large", with: "network reduced\nreduced_tail")
        let graph = try lower(parseSpec(data: Data(text.utf8), file: "reduced.mnet"))
        // torchvision: the last stage has 80 output channels, the head conv 480, the hidden linear 640.
        let linear = graph.nodes.compactMap { node -> Linear? in if case .linear(let l) = node.op { return l } else { return nil } }
        XCTAssertEqual(linear.first?.inFeatures, 480)
        XCTAssertEqual(linear.first?.outFeatures, 640)
    }

    func testDumpsMentionEveryNode() throws {
        let graph = try loadSpec("mobilenet_v3_small")
        let text = graph.textDump()
        XCTAssertEqual(text.split(separator: "\n").filter { $0.contains(" = ") }.count, graph.nodes.count)
        let dot = graph.dotDump()
        XCTAssertTrue(dot.hasPrefix("digraph"))
        XCTAssertEqual(dot.components(separatedBy: "[label=").count - 1, graph.nodes.count)
    }

    func testSpecDumpParsesBack() throws {
        let spec = try parseSpecFile(path: specPath("mobilenet_v3_large"))
        let reparsed = try parseSpec(data: Data(spec.textDump().utf8), file: "dump.mnet")
        XCTAssertEqual(try lower(reparsed).nodes, try lower(spec).nodes)
    }

    // MARK: - Bad input

    /// Parses `text` and returns the error message, failing when it parses.
    private func specError(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try lower(parseSpec(data: Data(text.utf8), file: "bad.mnet"))
            XCTFail("expected an error for:\n\(text)", file: file, line: line)
            return ""
        } catch {
            return "\(error)"
        }
    }

    private let header = "network test\ninput 224\nclasses 10\n"

    func testUnknownKeyword() {
        let message = specError(header + "convolution 3x3 out 32\n")
        XCTAssertEqual(message, "bad.mnet:4:1: error: unknown keyword 'convolution': expected network, input, classes, width, rounding, padding, batchnorm, preprocess, reduced_tail, conv, separable, inverted_residual, bneck, pool, dropout or linear")
    }

    func testWrongColumnCount() {
        let message = specError(header + "conv 3x3 stride 2 out 32\ninverted_residual\n  1 16 1\nend\n")
        XCTAssertEqual(message, "bad.mnet:6:3: error: an inverted_residual row has 4 columns 't c n s', found 3")
    }

    func testNonNumericField() {
        let message = specError(header + "conv 3x3 stride 2 out 32\ninverted_residual\n  1 sixteen 1 1\nend\n")
        XCTAssertTrue(message.hasPrefix("bad.mnet:6:5: error: expected an output channel count c, found 'sixteen'"), message)
    }

    func testInvalidStride() {
        let message = specError(header + "conv 3x3 stride 3 out 32\n")
        XCTAssertEqual(message, "bad.mnet:4:17: error: invalid stride '3': expected 1 or 2")
    }

    func testZeroChannels() {
        let message = specError(header + "conv 3x3 stride 2 out 0\n")
        XCTAssertEqual(message, "bad.mnet:4:23: error: invalid channel count '0': expected 1...100000")
    }

    func testNegativeChannels() {
        let message = specError(header + "conv 3x3 out 8\nseparable\n  -64 1 1\nend\n")
        XCTAssertTrue(message.hasPrefix("bad.mnet:6:3: error: invalid value '-64'"), message)
    }

    func testNonPositiveWidth() {
        XCTAssertEqual(specError("network test\ninput 224\nwidth 0\n"),
                       "bad.mnet:3:7: error: invalid value '0': expected a width multiplier α in (0, 16]")
        XCTAssertEqual(specError("network test\ninput 224\nwidth -0.5\n"),
                       "bad.mnet:3:7: error: invalid value '-0.5': expected a width multiplier α in (0, 16]")
    }

    func testWidthOverrideRejected() throws {
        let spec = try parseSpecFile(path: specPath("mobilenet_v2"))
        XCTAssertThrowsError(try spec.applying(SpecOverrides(widthMultiplier: 0))) { error in
            XCTAssertEqual("\(error)", "error: invalid width multiplier 0.0: expected a number in (0, 16]")
        }
    }

    func testResolutionBelowTotalStride() throws {
        let spec = try parseSpecFile(path: specPath("mobilenet_v2")).applying(SpecOverrides(inputHeight: 16, inputWidth: 16))
        XCTAssertThrowsError(try lower(spec)) { error in
            XCTAssertEqual("\(error)", "error: input 16x16 is smaller than the network's total stride 32: use at least 32 pixels per side (the size set by --resolution or --input-size)")
        }
        let text = try String(contentsOfFile: specPath("mobilenet_v2"), encoding: .utf8).replacingOccurrences(of: "input 224 ", with: "input 16  ")
        XCTAssertThrowsError(try lower(parseSpec(data: Data(text.utf8), file: "small.mnet"))) { error in
            XCTAssertEqual("\(error)", "small.mnet:6:7: error: input 16x16 is smaller than the network's total stride 32: use at least 32 pixels per side")
        }
    }

    func testBottleneckInputMismatch() {
        let message = specError(header + "conv 3x3 stride 2 out 16 act hardswish\nbneck\n  16 3 64 24 False RE 2\n  40 3 72 24 False RE 1\nend\npool avg\nlinear classes\n")
        XCTAssertEqual(message, "bad.mnet:7:3: error: bneck row input_c 40 differs from the previous row's out_c 24: each row's input is the previous row's output")
        let first = specError(header + "conv 3x3 stride 2 out 16 act hardswish\nbneck\n  24 3 64 24 False RE 2\nend\npool avg\nlinear classes\n")
        XCTAssertTrue(first.hasPrefix("bad.mnet:6:3: error: bneck row input_c 24 gives 24 channels"), first)
    }

    func testDuplicateSettings() {
        XCTAssertEqual(specError(header + "classes 5\n"),
                       "bad.mnet:4:1: error: duplicate 'classes' line: it is already set at line 3; give each setting once")
        XCTAssertEqual(specError(header + "conv 3x3 stride 2 stride 1 out 32\n"),
                       "bad.mnet:4:19: error: duplicate option 'stride': it is already given at column 10; give it once")
        XCTAssertEqual(specError(header + "conv 3x3 out 32 act relu6 act relu\n"),
                       "bad.mnet:4:27: error: duplicate option 'act': it is already given at column 17; give it once")
    }

    func testCRLFLineEndings() throws {
        let text = try String(contentsOfFile: specPath("mobilenet_v2"), encoding: .utf8).replacingOccurrences(of: "\n", with: "\r\n")
        let graph = try lower(parseSpec(data: Data(text.utf8), file: "crlf.mnet"))
        XCTAssertEqual(graph.trainableParameterCount, 3_504_872)
        XCTAssertEqual(specError("network x\r\ninput 224\r\nbogus 1\r\n"),
                       "bad.mnet:3:1: error: unknown keyword 'bogus': expected network, input, classes, width, rounding, padding, batchnorm, preprocess, reduced_tail, conv, separable, inverted_residual, bneck, pool, dropout or linear")
    }

    func testScaleOnMultiple() {
        XCTAssertEqual(specError(header + "conv 3x3 out 16\nconv 1x1 out 2x scale none\n"),
                       "bad.mnet:5:23: error: 'scale' applies to a plain channel count such as 'out 1280', not to 'classes' or a multiple such as '6x'")
    }

    func testUnknownActivation() {
        let message = specError(header + "conv 3x3 out 16 act swish\n")
        XCTAssertEqual(message, "bad.mnet:4:21: error: unknown activation 'swish': expected relu, relu6, hardswish, hardsigmoid, hardsigmoid_linear or identity")
    }

    func testMissingEnd() {
        let message = specError(header + "conv 3x3 out 16\nseparable\n  32 1 1\n")
        XCTAssertEqual(message, "bad.mnet:5:1: error: the separable table has no 'end' line")
    }

    func testRowOutsideTable() {
        let message = specError(header + "  1 16 1 1\n")
        XCTAssertTrue(message.hasPrefix("bad.mnet:4:3: error: table row '1 ...' outside a table"), message)
    }

    func testMissingClassifier() {
        let message = specError(header + "conv 3x3 stride 2 out 16\n")
        XCTAssertTrue(message.hasPrefix("bad.mnet:4:1: error: the network ends with a 112x112 feature map"), message)
    }

    func testClassCountMismatch() {
        let message = specError(header + "conv 3x3 stride 2 out 16\npool avg\nlinear 20 scale none\n")
        XCTAssertTrue(message.hasPrefix("bad.mnet:6:1: error: the last layer produces 20 values but the network has 10 classes"), message)
    }

    func testEmptyFile() {
        XCTAssertEqual(specError(""), "bad.mnet:1:1: error: the spec is empty: expected 'network NAME' followed by the input and layers")
        XCTAssertEqual(specError("# only a comment\n\n"), "bad.mnet:1:1: error: the spec is empty: expected 'network NAME' followed by the input and layers")
    }

    func testBinaryGarbage() {
        var generator = SplitMix64(state: 3)
        let bytes = (0..<4096).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        do {
            _ = try parseSpec(data: Data(bytes), file: "garbage.bin")
            XCTFail("garbage parsed")
        } catch {
            XCTAssertTrue("\(error)".hasPrefix("garbage.bin:1:"), "\(error)")
            XCTAssertTrue("\(error)".contains("a spec is a text file") || "\(error)".contains("not valid UTF-8"), "\(error)")
        }
    }

    func testHugeFileRejectedBeforeReading() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mnc-huge-\(getpid()).mnet").path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        try handle.truncate(atOffset: 100 << 20)
        try handle.close()
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try parseSpecFile(path: path)) { error in
            XCTAssertEqual("\(error)", "error: spec '\(path)' is 104857600 bytes; a spec is at most 1048576 bytes")
        }
    }

    func testMissingFile() {
        XCTAssertThrowsError(try parseSpecFile(path: "/nonexistent/x.mnet")) { error in
            XCTAssertEqual("\(error)", "error: cannot read spec '/nonexistent/x.mnet': file not found or not readable")
        }
    }

    func testCommandLineExitStatus() {
        var errors = ""
        let output = CommandOutput(write: { _ in }, writeError: { errors += $0 })
        XCTAssertEqual(runCommandLine(["check", "/nonexistent/x.mnet"], output: output), 1)
        XCTAssertTrue(errors.hasPrefix("error: cannot read spec"), errors)
        XCTAssertEqual(runCommandLine(["check", specPath("mobilenet_v2"), "--width-multiplier", "-1"], output: output), 1)
        XCTAssertEqual(runCommandLine(["check", specPath("mobilenet_v2"), "--bogus"], output: output), 1)
        XCTAssertEqual(runCommandLine(["frobnicate"], output: output), 2)
    }

    func testCheckJSON() throws {
        var text = ""
        let output = CommandOutput(write: { text += $0 }, writeError: { _ in })
        XCTAssertEqual(runCommandLine(["check", specPath("mobilenet_v2"), "--json"], output: output), 0)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        XCTAssertEqual(object?["parameters"] as? Int, 3_504_872)
        XCTAssertEqual(object?["macs"] as? Int, 300_774_272)
        XCTAssertEqual((object?["layers"] as? [Any])?.isEmpty, false)
    }
}

/// The spec and overrides of a `../shared/data/torch` case, from its directory name.
func torchCase(_ name: String) throws -> (String, SpecOverrides) {
    switch name {
    case "mobilenet_v2_1.0_224": return ("mobilenet_v2", SpecOverrides())
    case "mobilenet_v3_large_1.0_224": return ("mobilenet_v3_large", SpecOverrides())
    case "mobilenet_v3_small_1.0_224": return ("mobilenet_v3_small", SpecOverrides())
    case "mobilenet_v2_0.5_160_c10":
        return ("mobilenet_v2", SpecOverrides(widthMultiplier: 0.5, inputHeight: 160, inputWidth: 160, classes: 10))
    case "mobilenet_v3_small_0.75_128_c10":
        return ("mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.75, inputHeight: 128, inputWidth: 128, classes: 10))
    default:
        throw XCTSkip("unknown torch case \(name)")
    }
}
