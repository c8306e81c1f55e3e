import Foundation
import XCTest
@testable import MNC

/// The standalone classifier (`--emit executable`) and the C example in `Examples/`.
final class ClassifierExecutableTests: XCTestCase {
    lazy var temporary: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("mnc-exe-\(getpid())-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()

    override func tearDown() {
        try? FileManager.default.removeItem(at: temporary)
    }

    /// Compiles `spec` with `arguments` into an executable and returns its path.
    func buildClassifier(_ spec: String, _ arguments: [String], directory: String) throws -> String {
        var err = ""
        let status = runCommandLine(["compile", specPath(spec), "--emit", "executable", "-o", directory] + arguments,
                                    output: CommandOutput(write: { _ in }, writeError: { err += $0 }))
        XCTAssertEqual(status, 0, err)
        return "\(directory)/\(spec)"
    }

    func run(_ executable: String, _ arguments: [String]) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    /// A binary PPM of `width` × `height` pixels with a fixed pattern.
    func writePPM(_ path: String, width: Int, height: Int) throws {
        var bytes = Array("P6\n\(width) \(height)\n255\n".utf8)
        for y in 0..<height {
            for x in 0..<width {
                bytes += [UInt8((x * 255) / max(width - 1, 1)), UInt8((y * 255) / max(height - 1, 1)), 128]
            }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    // MARK: - Real models and photographs

    func testClassifiesPhotographsLikeReference() throws {
        let models: [(String, String, [String])] = [
            ("mobilenet_v2_1.0_224_quant", "tf_mobilenet_v2", []),
            ("mobilenet_v1_0.5_160_quant", "tf_mobilenet_v1", ["--width-multiplier", "0.5", "--resolution", "160"]),
            ("mobilenet_v1_0.25_128_quant", "tf_mobilenet_v1", ["--width-multiplier", "0.25", "--resolution", "128"]),
        ]
        let imagesDirectory = try sharedDataPath("images")
        let images = try FileManager.default.contentsOfDirectory(atPath: imagesDirectory).sorted().map { "\(imagesDirectory)/\($0)" }
        XCTAssertEqual(images.count, 4)
        for (model, spec, options) in models {
            let weights = try sharedDataPath("models/\(model).tflite")
            let labels = try sharedDataPath("models/imagenet_labels.txt")
            let executable = try buildClassifier(spec, options + ["--weights", weights, "--labels", labels],
                                                 directory: temporary.appendingPathComponent(model).path)
            let (status, out, err) = try run(executable, images + ["--json", "--top", "5"])
            XCTAssertEqual(status, 0, err)
            let results = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]], out)
            XCTAssertEqual(results.count, images.count)
            for result in results {
                let image = try XCTUnwrap(result["image"] as? String)
                let top = try XCTUnwrap(result["top"] as? [[String: Any]])
                XCTAssertEqual(top.count, 5)
                let name = URL(fileURLWithPath: image).deletingPathExtension().lastPathComponent
                let reference = try referenceTop5(path: try sharedDataPath("reference/\(model)/\(name).json"))
                XCTAssertEqual(top.first?["index"] as? Int, reference.first, "\(model) \(name)")
                XCTAssertEqual((top.first?["label"] as? String)?.isEmpty, false)
                let scores = top.compactMap { $0["score"] as? Double }
                XCTAssertEqual(scores, scores.sorted(by: >), "scores in decreasing order")
            }
        }
    }

    // MARK: - Generated weights and images, everywhere

    func testRandomWeightClassifier() throws {
        let executable = try buildClassifier("mobilenet_v3_small", ["--width-multiplier", "0.35", "--resolution", "64", "--classes", "7",
                                                                    "--random-weights"], directory: temporary.path)
        let image = temporary.appendingPathComponent("pattern.ppm").path
        try writePPM(image, width: 90, height: 70)

        // The executable's logits equal the interpreter's on the same preprocessed image.
        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 7)))
        let input = try loadPreprocessedImage(path: image, height: 64, width: 64, preprocessing: graphPreprocessing(graph, layout: .nchw))
        let logits = try Interpreter(graph: graph).run(input: input)
        let maximum = try XCTUnwrap(logits.max())
        let total = logits.map { exp(Double($0 - maximum)) }.reduce(0, +)

        let (status, out, err) = try run(executable, [image, "--json", "--top", "7"])
        XCTAssertEqual(status, 0, err)
        let results = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        let top = try XCTUnwrap(results.first?["top"] as? [[String: Any]])
        XCTAssertEqual(top.first?["index"] as? Int, topK(logits, 1).first)
        for entry in top {
            let index = try XCTUnwrap(entry["index"] as? Int)
            let score = try XCTUnwrap(entry["score"] as? Double)
            XCTAssertEqual(score, exp(Double(logits[index] - maximum)) / total, accuracy: 1e-4)
        }

        let (textStatus, text, _) = try run(executable, [image, "--top", "2"])
        XCTAssertEqual(textStatus, 0)
        XCTAssertEqual(text.split(separator: "\n").count, 3, text)
    }

    func testBadImagesAreReportedAndOthersStillRun() throws {
        let executable = try buildClassifier("mobilenet_v2", ["--width-multiplier", "0.35", "--resolution", "32", "--classes", "3",
                                                              "--random-weights"], directory: temporary.path)
        let good = temporary.appendingPathComponent("good.ppm").path
        try writePPM(good, width: 40, height: 30)
        let empty = temporary.appendingPathComponent("empty.jpg").path
        XCTAssertTrue(FileManager.default.createFile(atPath: empty, contents: Data()))
        let text = temporary.appendingPathComponent("notes.png").path
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: text))
        let truncated = temporary.appendingPathComponent("truncated.ppm").path
        try Data(Array(try Data(contentsOf: URL(fileURLWithPath: good)).prefix(100))).write(to: URL(fileURLWithPath: truncated))
        let huge = temporary.appendingPathComponent("huge.ppm").path
        try Data("P6\n100000 100000\n255\n".utf8).write(to: URL(fileURLWithPath: huge))
        let missing = temporary.appendingPathComponent("missing.bmp").path

        let (status, out, err) = try run(executable, [empty, good, text, truncated, huge, missing])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(out.contains(good), out)
        let errors = err.split(separator: "\n")
        XCTAssertEqual(errors.count, 5, err)
        for path in [empty, text, truncated, huge, missing] {
            XCTAssertTrue(errors.contains { $0.hasPrefix("error: \(path): ") }, "\(path) in \(err)")
        }
    }

    func testBenchAndOptions() throws {
        let directory = temporary.path
        let executable = try buildClassifier("mobilenet_v2", ["--width-multiplier", "0.35", "--resolution", "32", "--classes", "3",
                                                              "--random-weights"], directory: directory)
        let image = temporary.appendingPathComponent("image.ppm").path
        try writePPM(image, width: 32, height: 32)

        let (status, out, _) = try run(executable, [image, "--bench", "5", "--threads", "1"])
        XCTAssertEqual(status, 0)
        let line = try XCTUnwrap(out.split(separator: "\n").last.map(String.init))
        XCTAssertNotNil(line.range(of: #"^median \d+\.\d{3} ms over 5 runs \(min \d+\.\d{3} ms, max \d+\.\d{3} ms"#, options: .regularExpression), line)

        // The weight blob from a file gives the same output as the compiled-in weights.
        let (blobStatus, blobOut, blobErr) = try run(executable, [image, "--weights", "\(directory)/mobilenet_v2.weights.bin"])
        XCTAssertEqual(blobStatus, 0, blobErr)
        let (_, embeddedOut, _) = try run(executable, [image])
        XCTAssertEqual(blobOut, embeddedOut)

        let wrongBlob = temporary.appendingPathComponent("short.bin").path
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: wrongBlob))
        let (wrongStatus, _, wrongErr) = try run(executable, [image, "--weights", wrongBlob])
        XCTAssertEqual(wrongStatus, 1)
        XCTAssertTrue(wrongErr.contains("expected a weight blob of"), wrongErr)

        // A blob one byte too long gets the same message as a short one.
        let longBlob = temporary.appendingPathComponent("long.bin").path
        var longData = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/mobilenet_v2.weights.bin"))
        longData.append(0)
        try longData.write(to: URL(fileURLWithPath: longBlob))
        let (longStatus, _, longErr) = try run(executable, [image, "--weights", longBlob])
        XCTAssertEqual(longStatus, 1)
        XCTAssertTrue(longErr.contains("bytes, expected a weight blob of"), longErr)

        let labels = temporary.appendingPathComponent("labels.txt").path
        try Data("zero\none\ntwo\n".utf8).write(to: URL(fileURLWithPath: labels))
        let (_, labelled, _) = try run(executable, [image, "--labels", labels, "--top", "3"])
        for name in ["zero", "one", "two"] {
            XCTAssertTrue(labelled.contains(name), labelled)
        }

        for bad in [["--top", "0"], ["--top", "4"], ["--bench", "x"], ["--threads", "0"], ["--frobnicate"]] {
            let (badStatus, _, badErr) = try run(executable, [image] + bad)
            XCTAssertEqual(badStatus, 2, "\(bad)")
            XCTAssertTrue(badErr.hasPrefix("error: "), badErr)
        }
        let (noImageStatus, _, _) = try run(executable, [])
        XCTAssertEqual(noImageStatus, 2)
    }

    func testClassifierUnderSanitizers() throws {
        let flags = "-O1 -g -std=c99 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=all"
        var executable = ""
        try withEnvironment(["CFLAGS": flags]) {
            executable = try buildClassifier("mobilenet_v3_small", ["--width-multiplier", "0.35", "--resolution", "48", "--classes", "5",
                                                                    "--random-weights"], directory: temporary.path)
        }
        let image = temporary.appendingPathComponent("image.ppm").path
        try writePPM(image, width: 61, height: 47)
        let broken = temporary.appendingPathComponent("broken.ppm").path
        try Data("P6\n61 47\n255\n\u{1}\u{2}".utf8).write(to: URL(fileURLWithPath: broken))
        let (status, out, err) = try run(executable, [image, broken, "--json", "--bench", "2"])
        XCTAssertEqual(status, 1, err)
        XCTAssertFalse(err.contains("Sanitizer"), err)
        XCTAssertTrue(err.contains("error: \(broken): "), err)
        XCTAssertTrue(out.contains(image), out)
    }

    func testExecutableNeedsWeights() {
        var err = ""
        let status = runCommandLine(["compile", specPath("mobilenet_v2"), "--emit", "executable", "-o", temporary.path],
                                    output: CommandOutput(write: { _ in }, writeError: { err += $0 }))
        XCTAssertEqual(status, 1)
        XCTAssertEqual(err, "error: --emit executable embeds the weights: pass --weights FILE (or --random-weights to try the build)\n")
    }

    // MARK: - Examples/

    func testExampleLinksStaticLibrary() throws {
        let build = temporary.appendingPathComponent("example").path
        let overrides = ["--width-multiplier", "0.5", "--resolution", "64", "--classes", "4"]
        var err = ""
        let status = runCommandLine(["compile", specPath("mobilenet_v3_large"), "--random-weights", "--emit", "static-lib", "-o", build] + overrides,
                                    output: CommandOutput(write: { _ in }, writeError: { err += $0 }))
        XCTAssertEqual(status, 0, err)
        let make = try run("/usr/bin/make", ["-s", "-C", packageRoot.appendingPathComponent("Examples").path,
                                              "MODEL=mobilenet_v3_large", "BUILD=\(build)"])
        XCTAssertEqual(make.0, 0, make.1 + make.2)

        let graph = bindRandomWeights(to: try loadSpec("mobilenet_v3_large", SpecOverrides(widthMultiplier: 0.5, inputHeight: 64, inputWidth: 64, classes: 4)))
        let input = randomInput(count: 3 * 64 * 64)
        let inputPath = temporary.appendingPathComponent("input.f32").path
        try writeFloat32File(path: inputPath, values: input)
        let logits = try Interpreter(graph: graph).run(input: input)
        let best = try XCTUnwrap(topK(logits, 1).first)

        let (runStatus, out, runErr) = try run("\(build)/classify", [inputPath])
        XCTAssertEqual(runStatus, 0, runErr)
        let fields = out.split(separator: " ")
        XCTAssertEqual(fields.count, 4, out)
        XCTAssertEqual(fields.count == 4 ? Int(fields[1]) : nil, best)
        XCTAssertEqual(fields.count == 4 ? Float(fields[3].trimmingCharacters(in: .whitespacesAndNewlines)) ?? .nan : .nan, logits[best], accuracy: 1e-4 * maxAbs(logits))
    }
}
