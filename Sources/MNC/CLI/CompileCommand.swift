import Foundation

let compileCommand = Command(
    name: "compile",
    usage: "mnc compile SPEC [spec options] [--weights W | --random-weights] [-O0|-O1|-O2|-O3] [--disable-pass NAME]... [--backend c|llvm] [--emit KIND] [--threads N] [--labels FILE] [--target TRIPLE] [--cpu NAME] [--features LIST] -o DIR [--name NAME]",
    summary: """
    Compile a network to C: write NAME.h (the API) and NAME.c (the network) into DIR, plus the
    weight blob as NAME.weights.bin and NAME_weights.c when --weights is given. --emit object,
    static-lib and shared-lib also build NAME.o, libNAME.a or libNAME.so with the C compiler
    in CC (default cc) and the flags in CFLAGS (default -O2 -std=c99 -Wall -Wextra).
    --emit executable builds DIR/NAME, a classifier with the weights compiled in:
    'DIR/NAME IMAGE... [--top K] [--labels FILE] [--json] [--weights FILE] [--bench N] [--threads T]'
    decodes JPEG, PNG, BMP and PPM images (libjpeg, libpng) and prints the top classes.
    --threads N (C backend) splits every layer into N parts and adds a pthreads pool that runs
    them on up to N threads (NAME_run_threads); every build step then links with -pthread.
    --backend llvm builds the same API through LLVM instead: NAME.h plus NAME.ll, NAME.bc,
    NAME.o, libNAME.a, libNAME.so or the classifier executable NAME, for the host or --target.
    There the -O level also selects LLVM's pipeline, default<O0> to default<O3>.
    """,
    options: specOptions + optimizationOptions + [
        OptionSpec(name: "weights", value: "W", help: "weights file: .safetensors, PyTorch .pth, .tflite or .onnx (default: none; the code depends on shapes only)"),
        OptionSpec(name: "random-weights", value: nil, help: "bind deterministic random weights instead of --weights, to try a build"),
        OptionSpec(name: "backend", value: "B", help: "c (C source, compiled with CC) or llvm (LLVM \(llvmVersion) in process) (default: c)"),
        OptionSpec(name: "emit", value: "KIND", help: "c: c (sources only), object, static-lib, shared-lib or executable (an image classifier; needs weights) (default: c); llvm: llvm-ir, bitcode, object, static-lib, shared-lib or executable (default: object)"),
        OptionSpec(name: "threads", value: "N", help: "c: the most threads one inference runs on, 1...\(maximumCThreads); above 1 the code has a pthreads pool and the classifier runs on N threads unless its --threads says fewer; llvm: 1 only (default: 1)"),
        OptionSpec(name: "labels", value: "FILE", help: "class names, one per line, compiled into the executable (default: none; indices only)"),
        OptionSpec(name: "target", value: "TRIPLE", help: "llvm: target triple, e.g. aarch64-linux-gnu or thumbv7em-none-eabi (default: the host)"),
        OptionSpec(name: "cpu", value: "NAME", help: "llvm: target CPU, e.g. x86-64, cortex-a53, or native (default: the host's CPU, or LLVM's default for the triple with --target)"),
        OptionSpec(name: "features", value: "LIST", help: "llvm: target features, e.g. +avx2,+fma or -neon (default: the host's with no --target, else none)"),
        OptionSpec(name: "o", value: "DIR", help: "output directory, created if missing (required)"),
        OptionSpec(name: "name", value: "NAME", help: "prefix of the generated file names and C identifiers (default: the network's name)"),
    ],
    run: { arguments, output in
        let backend = try arguments.choice("backend", ["c", "llvm"], default: "c")
        let threads = try arguments.integer("threads", in: 1...maximumCThreads) ?? 1
        if backend == "llvm" {
            guard threads == 1 else {
                throw MNCError("--threads \(threads): the LLVM backend builds single-threaded code; use --backend c for threads, or drop --threads")
            }
            return try compileWithLLVM(arguments, output: output)
        }
        for option in ["target", "cpu", "features"] where arguments.has(option) {
            throw MNCError("--\(option) applies to the LLVM backend only: add --backend llvm")
        }
        let emit = try arguments.choice("emit", CompileEmit.allCases.map(\.rawValue), default: "c")
        guard let directory = arguments.value("o") else {
            throw MNCError("'mnc compile' needs an output directory: pass -o DIR")
        }
        var (_, graph) = try loadGraph(arguments, command: "compile")
        graph = try bindSelectedWeights(arguments, to: graph, output: output)
        graph = try optimize(graph, options: arguments)
        let generated = try generateC(graph, name: arguments.value("name"), threads: threads)
        let labels = try classifierLabels(arguments, graph: graph, buildsExecutable: emit == CompileEmit.executable.rawValue)
        let written = try writeCompiledNetwork(generated, emit: CompileEmit(rawValue: emit) ?? .c, directory: directory,
                                               compiler: .fromEnvironment(),
                                               classifier: ClassifierSources(graph: graph, names: generated.names, labels: labels,
                                                                             threads: threads))
        for path in written {
            output.write("wrote \(path)\n")
        }
        return 0
    })

/// Returns the class names from `--labels` for a classifier executable, after checking that the
/// network can classify images (3 input channels) and that there is one name per class.
func classifierLabels(_ arguments: ParsedArguments, graph: Graph, buildsExecutable: Bool) throws -> [String] {
    guard buildsExecutable else {
        if arguments.has("labels") {
            throw MNCError("--labels applies to --emit executable, which compiles the names in")
        }
        return []
    }
    try requireRGBInput(graph)
    guard let path = arguments.value("labels") else { return [] }
    var labels = try readLabels(path: path)
    // A final newline leaves one empty name after the last line.
    if labels.last == "" { labels.removeLast() }
    let classes = graph.outputShape[1]
    guard labels.count == classes else {
        throw MNCError("labels '\(path)' has \(labels.count) names, but '\(graph.name)' has \(classes) classes: expected one name per line per class")
    }
    return labels
}

/// Binds the weights that `--weights FILE` or `--random-weights` select, if any. `action` starts
/// the note printed for random weights ("compiling", "running").
func bindSelectedWeights(_ arguments: ParsedArguments, to graph: Graph, output: CommandOutput,
                        action: String = "compiling") throws -> Graph {
    switch (arguments.value("weights"), arguments.has("random-weights")) {
    case (let weights?, false):
        return try bindWeights(path: weights, to: graph)
    case (nil, true):
        output.writeError("note: \(action) '\(graph.name)' with random weights: its predictions are meaningless\n")
        return bindRandomWeights(to: graph)
    case (_?, true):
        throw MNCError("give either --weights or --random-weights, not both")
    case (nil, false):
        return graph
    }
}

/// The artifact that `mnc compile` builds from the generated sources.
public enum CompileEmit: String, CaseIterable {
    case c
    case object
    case staticLibrary = "static-lib"
    case sharedLibrary = "shared-lib"
    case executable
}

/// Writes the generated files into `directory` (created if missing) and builds the requested
/// artifact from them. Returns the paths written, in order. The object and both libraries
/// include the weights array when the graph had weights bound. A threaded build compiles and
/// links with `-pthread`.
@discardableResult
public func writeCompiledNetwork(_ generated: GeneratedC, emit: CompileEmit, directory: String,
                                 compiler: CCompiler, classifier: ClassifierSources? = nil) throws -> [String] {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
        guard isDirectory.boolValue else {
            throw MNCError("cannot write to output directory '\(directory)': it is a file")
        }
    } else {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw MNCError("cannot create output directory '\(directory)': check that its parent exists and is writable")
        }
    }

    var written: [String] = []
    for file in generated.files {
        let path = directory + "/" + file.name
        try writeFile(path, file.contents)
        written.append(path)
    }

    let names = generated.names
    let threadFlags = generated.threads > 1 ? ["-pthread"] : []
    var sources = [directory + "/" + names.sourceFile]
    if generated.weightsSource != nil {
        sources.append(directory + "/" + names.weightsSourceFile)
    }
    switch emit {
    case .c:
        break
    case .object:
        let object = directory + "/\(names.function).o"
        try compiler.compileObject(sources: sources, output: object, extraFlags: threadFlags)
        written.append(object)
    case .staticLibrary:
        let scratch = try makeTemporaryDirectory(prefix: "mnc-archive")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let object = scratch + "/\(names.function).o"
        try compiler.compileObject(sources: sources, output: object, extraFlags: threadFlags)
        let library = directory + "/lib\(names.function).a"
        try compiler.archive(objects: [object], output: library)
        written.append(library)
    case .sharedLibrary:
        let library = directory + "/lib\(names.function).so"
        try compiler.linkSharedLibrary(sources: sources, output: library, extraFlags: threadFlags)
        written.append(library)
    case .executable:
        guard generated.weightsSource != nil, let classifier else {
            throw MNCError("--emit executable embeds the weights: pass --weights FILE (or --random-weights to try the build)")
        }
        for (file, text) in [("mnc_image.h", EmbeddedImageSource.header), ("mnc_image.c", EmbeddedImageSource.source),
                             ("\(names.function)_main.c", classifier.main)] {
            let path = directory + "/" + file
            try writeFile(path, Array(text.utf8))
            written.append(path)
        }
        let executable = directory + "/" + names.function
        try compiler.linkExecutable(sources: sources + [directory + "/mnc_image.c", directory + "/\(names.function)_main.c"],
                                    output: executable, extraFlags: threadFlags, libraries: ["jpeg", "png"])
        written.append(executable)
    }
    return written
}

/// The extra source of a standalone classifier: its `main`, with the labels compiled in.
public struct ClassifierSources {
    public var main: String

    public init(graph: Graph, names: CNames, labels: [String], threads: Int = 1) {
        main = classifierMainSource(graph: graph, name: names.function, labels: labels, threads: threads)
    }
}
