import Foundation

let runCommand = Command(
    name: "run",
    usage: "mnc run SPEC (--weights W | --random-weights) (--input FILE.f32 | --image FILE) [--output FILE.f32] [--layout nchw|nhwc] [--engine interpreter|c|llvm] [--threads N] [--top K] [spec options]",
    summary: """
    Run one inference: bind the weights, read one raw little-endian float32 input tensor (or
    decode and preprocess an image as the spec's 'preprocess' line says), and write the raw
    float32 logits. Prints the top-K classes with softmax scores.
    """,
    options: specOptions + optimizationOptions + [
        OptionSpec(name: "weights", value: "W", help: "weights file: .safetensors, PyTorch .pth, .tflite or .onnx"),
        OptionSpec(name: "random-weights", value: nil, help: "bind the deterministic random weights of 'mnc compile --random-weights' instead of --weights"),
        OptionSpec(name: "input", value: "FILE", help: "raw float32 little-endian input tensor of the network's input size"),
        OptionSpec(name: "image", value: "FILE", help: "JPEG, PNG, BMP or PPM image, preprocessed as the spec's preprocess line specifies"),
        OptionSpec(name: "output", value: "FILE", help: "where to write the raw float32 logits (default: not written)"),
        OptionSpec(name: "layout", value: "L", help: "layout of the --input tensor: nchw or nhwc (default: the spec's preprocess layout)"),
        OptionSpec(name: "engine", value: "E", help: "interpreter (the reference), c (generated C, compiled with CC) or llvm (the LLVM backend for the host) (default: interpreter)"),
        OptionSpec(name: "threads", value: "N", help: "c: generate the code for N threads, 1...\(maximumCThreads), and run it on a pool of N threads (default: 1)"),
        OptionSpec(name: "labels", value: "FILE", help: "class names, one per line, for the printed top-K"),
        OptionSpec(name: "top", value: "K", help: "number of classes to print (default: 5; 0 prints none)"),
    ],
    run: { arguments, output in
        let engine = try arguments.choice("engine", ["interpreter", "c", "llvm"], default: "interpreter")
        let threads = try arguments.integer("threads", in: 1...maximumCThreads) ?? 1
        guard threads == 1 || engine == "c" else {
            throw MNCError("--threads \(threads) applies to --engine c only: the \(engine) engine runs on one thread")
        }
        let (_, unbound) = try loadGraph(arguments, command: "run")
        guard arguments.value("weights") != nil || arguments.has("random-weights") else {
            throw MNCError("'mnc run' needs --weights FILE (safetensors, .pth, .tflite or .onnx) or --random-weights")
        }
        let graph = try bindSelectedWeights(arguments, to: unbound, output: output, action: "running")
        let layout = try TensorLayout(rawValue: arguments.choice("layout", ["nchw", "nhwc"],
                                                                 default: graph.preprocessing.layout.rawValue)) ?? .nchw
        let shape = graph.inputShape
        let (channels, height, width) = (shape[1], shape[2], shape[3])

        // The input in NCHW, as the interpreter reads it.
        var input: [Float]
        switch (arguments.value("input"), arguments.value("image")) {
        case (let path?, nil):
            let values = try readFloat32File(path: path, count: channels * height * width)
            input = layout == .nhwc ? nhwcToNCHW(values, channels: channels, height: height, width: width) : values
        case (nil, let path?):
            try requireRGBInput(graph)
            input = try loadPreprocessedImage(path: path, height: height, width: width,
                                              preprocessing: graphPreprocessing(graph, layout: .nchw))
        case (nil, nil):
            throw MNCError("'mnc run' needs --input FILE.f32 or --image FILE")
        default:
            throw MNCError("give either --input or --image, not both")
        }

        let optimized = try optimize(graph, options: arguments)
        let logits: [Float]
        switch engine {
        case "c":
            logits = try runGeneratedC(graph: optimized, input: input, inputLayout: .nchw, threads: threads)
        case "llvm":
            let level = Int(arguments.value("optimization") ?? "2") ?? 2
            logits = try runGeneratedLLVM(graph: optimized, input: input, inputLayout: .nchw,
                                          options: LLVMTargetOptions(optimizationLevel: level))
        default:
            logits = try Interpreter(graph: optimized).run(input: input)
        }

        if let path = arguments.value("output") {
            try writeFloat32File(path: path, values: logits)
        }
        let top = try arguments.integer("top", in: 0...100_000) ?? 5
        let labels = try arguments.value("labels").map(readLabels) ?? []
        output.write(formatTopK(logits: logits, k: top, labels: labels))
        return 0
    })

/// Rejects networks whose input is not 3 channels, since images are decoded to RGB.
func requireRGBInput(_ graph: Graph) throws {
    let channels = graph.inputShape[1]
    guard channels == 3 else {
        throw MNCError("'\(graph.name)' takes \(channels) input channels, but images decode to 3 (RGB): use --input with a raw tensor, or a spec with 'input SIZE channels 3'")
    }
}

/// Returns the graph's preprocessing with the tensor layout replaced.
func graphPreprocessing(_ graph: Graph, layout: TensorLayout) -> Preprocessing {
    var preprocessing = graph.preprocessing
    preprocessing.layout = layout
    return preprocessing
}

/// Reads exactly `count` little-endian float32 values, checking the file size first.
func readFloat32File(path: String, count: Int) throws -> [Float] {
    guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
          let size = (attributes[.size] as? NSNumber)?.intValue else {
        throw MNCError("cannot read input '\(path)': file not found or not readable")
    }
    if let type = attributes[.type] as? FileAttributeType, type == .typeDirectory {
        throw MNCError("cannot read input '\(path)': it is a directory")
    }
    guard size == count * 4 else {
        throw MNCError("input '\(path)' has \(size) bytes, the network expects \(count) float32 values (\(count * 4) bytes)")
    }
    guard let data = FileManager.default.contents(atPath: path), data.count == size else {
        throw MNCError("cannot read input '\(path)'")
    }
    let values = data.withUnsafeBytes { raw in
        (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
    }
    // The engines treat NaN differently (max() in a kernel may drop it), so no output is trustworthy.
    if let index = values.firstIndex(where: { !$0.isFinite }) {
        throw MNCError("input '\(path)' has a non-finite value (\(values[index])) at index \(index): expected finite float32 values")
    }
    return values
}

func writeFloat32File(path: String, values: [Float]) throws {
    var data = Data(capacity: values.count * 4)
    for value in values {
        withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) }
    }
    do {
        try data.write(to: URL(fileURLWithPath: path))
    } catch {
        let reason = (error as NSError).localizedFailureReason ?? (error as NSError).localizedDescription
        throw MNCError("cannot write output '\(path)': \(reason)")
    }
}

func nhwcToNCHW(_ values: [Float], channels: Int, height: Int, width: Int) -> [Float] {
    var result = [Float](repeating: 0, count: values.count)
    for y in 0..<height {
        for x in 0..<width {
            for c in 0..<channels {
                result[(c * height + y) * width + x] = values[(y * width + x) * channels + c]
            }
        }
    }
    return result
}

/// Reads class names, one per line; at most 1 MiB.
func readLabels(path: String) throws -> [String] {
    guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
          let size = (attributes[.size] as? NSNumber)?.intValue, size <= 1 << 20,
          let data = FileManager.default.contents(atPath: path),
          let text = String(data: data, encoding: .utf8) else {
        throw MNCError("cannot read labels '\(path)': expected a UTF-8 text file of at most 1 MiB, one class name per line")
    }
    return text.split(separator: "\n", omittingEmptySubsequences: false).map {
        $0.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Formats the `k` highest softmax scores, one class per line.
func formatTopK(logits: [Float], k: Int, labels: [String]) -> String {
    guard k > 0, let maximum = logits.max() else { return "" }
    let exponentials = logits.map { Double(exp($0 - maximum)) }
    let total = exponentials.reduce(0, +)
    let ranked = logits.indices.sorted { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }.prefix(k)
    var text = ""
    for index in ranked {
        let label = index < labels.count && !labels[index].isEmpty ? "  \(labels[index])" : ""
        text += String(format: "%5d  %.4f  %+.4f", index, exponentials[index] / total, logits[index]) + label + "\n"
    }
    return text
}
