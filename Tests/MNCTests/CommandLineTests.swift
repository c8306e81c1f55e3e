import Foundation
import XCTest
@testable import MNC

final class CommandLineTests: XCTestCase {
    /// Runs `mnc` in-process and returns the exit status, standard output and standard error.
    func mnc(_ arguments: [String]) -> (Int32, String, String) {
        var out = "", err = ""
        let status = runCommandLine(arguments, output: CommandOutput(write: { out += $0 }, writeError: { err += $0 }))
        return (status, out, err)
    }

    lazy var temporary: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("mnc-cli-\(getpid())-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()

    override func tearDown() {
        try? FileManager.default.removeItem(at: temporary)
    }

    func testHelpDescribesEveryCommand() {
        let (status, out, _) = mnc(["--help"])
        XCTAssertEqual(status, 0)
        for command in ["check", "dump", "inspect", "run"] {
            XCTAssertTrue(out.contains("  \(command)"), command)
            let (commandStatus, help, _) = mnc([command, "--help"])
            XCTAssertEqual(commandStatus, 0, command)
            XCTAssertTrue(help.hasPrefix("usage: mnc \(command)"), help)
        }
        let (_, runHelp, _) = mnc(["run", "--help"])
        XCTAssertTrue(runHelp.contains("--width-multiplier A"))
        XCTAssertTrue(runHelp.contains("(default: interpreter)"))
    }

    /// `mnc check` reports the generated header's ARENA_SIZE, scratch included.
    func testCheckArenaMatchesHeader() throws {
        for name in ["mobilenet_v2", "mobilenet_v3_small"] {
            let (status, out, _) = mnc(["check", specPath(name), "--json"])
            XCTAssertEqual(status, 0, name)
            let report = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
            let header = try generateC(try optimize(try loadSpec(name)), name: name).header
            let macro = "#define \(name.uppercased())_ARENA_SIZE "
            let line = header.split(separator: "\n").first { $0.hasPrefix(macro) }
            let size = line.flatMap { Int($0.dropFirst(macro.count).prefix { $0.isNumber }) }
            XCTAssertNotNil(size, name)
            XCTAssertEqual(report?["arena_bytes"] as? Int, size, name)
        }
    }

    func testDumpStages() {
        let spec = specPath("mobilenet_v3_small")
        let (_, graph, _) = mnc(["dump", spec, "--stage", "graph"])
        XCTAssertTrue(graph.contains("features.1.block.1.fc1.weight"))
        let (_, fused, _) = mnc(["dump", spec, "--stage", "fused"])
        XCTAssertTrue(fused.contains("conv3x3 + bn + hardswish"))
        XCTAssertTrue(fused.contains("squeeze_excite("))
        let (_, planned, _) = mnc(["dump", spec, "--stage", "planned"])
        XCTAssertTrue(planned.contains("arena over time"))
        let (_, unfused, _) = mnc(["dump", spec, "--stage", "fused", "-O0"])
        XCTAssertTrue(unfused.contains("= bn(%"))
        let (_, noSE, _) = mnc(["dump", spec, "--stage", "fused", "--disable-pass", "fuse-squeeze-excite"])
        XCTAssertFalse(noSE.contains("squeeze_excite("))
        let (status, _, err) = mnc(["dump", spec, "--stage", "spec", "--format", "dot"])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("--format dot applies to graph stages"), err)
    }

    func testRunWithGeneratedWeights() throws {
        // A small random-weight safetensors file written by the test itself.
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 32, inputWidth: 32, classes: 5)))
        let weights = temporary.appendingPathComponent("w.safetensors").path
        try writeSafetensors(graph: graph, path: weights)
        let input = temporary.appendingPathComponent("in.f32").path
        let values = randomInput(count: 3 * 32 * 32)
        try writeFloat32File(path: input, values: values)
        let output = temporary.appendingPathComponent("out.f32").path
        let (status, out, err) = mnc(["run", specPath("mobilenet_v2"), "--width-multiplier", "0.35", "--resolution", "32",
                                      "--classes", "5", "--weights", weights, "--input", input, "--output", output, "--top", "2"])
        XCTAssertEqual(status, 0, err)
        XCTAssertEqual(out.split(separator: "\n").count, 2)
        let expected = try Interpreter(graph: graph).run(input: values)
        XCTAssertLessThanOrEqual(maxAbsDifference(try readFloats(output), expected), 1e-4 * maxAbs(expected))
    }

    /// `mnc run --random-weights` binds the weights of `mnc compile --random-weights`, so a
    /// random-weight build can be checked against the interpreter.
    func testRunWithRandomWeights() throws {
        let small = ["--width-multiplier", "0.35", "--resolution", "32", "--classes", "5"]
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 32, inputWidth: 32, classes: 5)))
        let input = temporary.appendingPathComponent("in.f32").path
        let values = randomInput(count: 3 * 32 * 32)
        try writeFloat32File(path: input, values: values)
        let output = temporary.appendingPathComponent("out.f32").path
        let (status, _, err) = mnc(["run", specPath("mobilenet_v2")] + small + ["--random-weights", "--input", input, "--output", output])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("note: running 'mobilenet_v2' with random weights"), err)
        let expected = try Interpreter(graph: graph).run(input: values)
        XCTAssertLessThanOrEqual(maxAbsDifference(try readFloats(output), expected), 1e-4 * maxAbs(expected))

        let (bothStatus, _, bothErr) = mnc(["run", specPath("mobilenet_v2")] + small
            + ["--random-weights", "--weights", "w.safetensors", "--input", input])
        XCTAssertEqual(bothStatus, 1)
        XCTAssertTrue(bothErr.contains("give either --weights or --random-weights, not both"), bothErr)
    }

    func testRunRejectsBadInputs() throws {
        let spec = specPath("mobilenet_v2")
        let small = ["--width-multiplier", "0.35", "--resolution", "32", "--classes", "5"]
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 32, inputWidth: 32, classes: 5)))
        let weights = temporary.appendingPathComponent("w.safetensors").path
        try writeSafetensors(graph: graph, path: weights)
        let shortInput = temporary.appendingPathComponent("short.f32").path
        try writeFloat32File(path: shortInput, values: [1, 2, 3])

        var (status, _, err) = mnc(["run", spec] + small + ["--weights", weights, "--input", shortInput])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(err, "error: input '\(shortInput)' has 12 bytes, the network expects 3072 float32 values (12288 bytes)\n")

        (status, _, err) = mnc(["run", spec] + small + ["--input", shortInput])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("needs --weights FILE"), err)

        (status, _, err) = mnc(["run", spec] + small + ["--weights", "/nonexistent.safetensors", "--input", shortInput])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("cannot read weights '/nonexistent.safetensors'"), err)

        (status, _, err) = mnc(["run", spec, "--weights", weights, "--input", shortInput])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("does not match the graph"), err)
        XCTAssertTrue(err.contains("'features.0.0.weight' has shape [16,3,3,3] in the file, the graph expects [32,3,3,3] (layer features.0)"), err)
        XCTAssertTrue(err.contains("258 shape mismatches: "), err)
        XCTAssertTrue(err.contains(" and 253 more."), err)

        let notImage = temporary.appendingPathComponent("not-an-image.jpg").path
        try Data("hello".utf8).write(to: URL(fileURLWithPath: notImage))
        (status, _, err) = mnc(["run", spec] + small + ["--weights", weights, "--image", notImage])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.hasPrefix("error: \(notImage):"), err)

        let nanInput = temporary.appendingPathComponent("nan.f32").path
        var values = [Float](repeating: 0.5, count: 3 * 32 * 32)
        values[17] = .nan
        try writeFloat32File(path: nanInput, values: values)
        (status, _, err) = mnc(["run", spec] + small + ["--weights", weights, "--input", nanInput])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(err, "error: input '\(nanInput)' has a non-finite value (nan) at index 17: expected finite float32 values\n")

        (status, _, err) = mnc(["run", spec] + small + ["--weights", weights, "--input", temporary.path])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(err, "error: cannot read input '\(temporary.path)': it is a directory\n")

        (status, _, err) = mnc(["run", spec] + small + ["--weights", weights, "--input", shortInput, "--engine", "gpu"])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("invalid value 'gpu' for --engine"), err)
    }

    func testInspectListsTensors() throws {
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.35, inputHeight: 32, inputWidth: 32, classes: 5)))
        let weights = temporary.appendingPathComponent("w.safetensors").path
        try writeSafetensors(graph: graph, path: weights)
        let (status, out, _) = mnc(["inspect", weights])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(out.contains("features.1.block.1.fc1.weight"), out)
        let (badStatus, _, err) = mnc(["inspect", "/nonexistent.pth"])
        XCTAssertEqual(badStatus, 1)
        XCTAssertTrue(err.contains("/nonexistent.pth"), err)

        // Unrecognized content is named by the format its extension promises.
        let text = Data("plain text, not weights\n".utf8)
        for (file, expected) in [
            ("notes.pth", "is not a PyTorch checkpoint: it does not start with a zip archive header, as files written by torch.save do"),
            ("notes.tflite", "is not a TFLite model: it has no 'TFL3' identifier at offset 4"),
            ("notes.bin", "is not a recognized weights file: expected safetensors, a PyTorch .pth (zip archive), TFLite or ONNX (.onnx)"),
        ] {
            let path = temporary.appendingPathComponent(file).path
            try text.write(to: URL(fileURLWithPath: path))
            let (status, _, message) = mnc(["inspect", path])
            XCTAssertEqual(status, 1, file)
            XCTAssertEqual(message, "error: \(path) \(expected)\n")
        }
    }

    func testInspectRealModels() throws {
        let tflite = try sharedDataPath("models/mobilenet_v1_0.25_128_quant.tflite")
        let (status, out, _) = mnc(["inspect", tflite])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(out.contains("DEPTHWISE_CONV_2D"), out)
        let onnx = try sharedDataPath("onnx/mobilenet_v3_small_1.0_224.onnx")
        let (onnxStatus, onnxOut, _) = mnc(["inspect", onnx])
        XCTAssertEqual(onnxStatus, 0)
        XCTAssertTrue(onnxOut.contains("Conv"), onnxOut)
    }
}

/// Writes the graph's bound constants as an F32 safetensors file, keys in node order.
func writeSafetensors(graph: Graph, path: String) throws {
    var header: [String] = []
    var payload = Data()
    for node in graph.nodes {
        for parameter in node.parameters {
            guard let tensor = graph.constants[parameter.key] else { continue }
            let start = payload.count
            for value in tensor.data {
                withUnsafeBytes(of: value.bitPattern.littleEndian) { payload.append(contentsOf: $0) }
            }
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            header.append("\"\(parameter.key)\":{\"dtype\":\"F32\",\"shape\":[\(shape)],\"data_offsets\":[\(start),\(payload.count)]}")
        }
    }
    let json = Data(("{" + header.joined(separator: ",") + "}").utf8)
    var file = Data()
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
    file.append(json)
    file.append(payload)
    try file.write(to: URL(fileURLWithPath: path))
}
