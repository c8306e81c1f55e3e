import Foundation

/// The artifact that `mnc compile --backend llvm` writes besides the header and the weight files.
public enum LLVMEmit: String, CaseIterable {
    /// `NAME.ll`, textual IR after LLVM's optimization pipeline.
    case llvmIR = "llvm-ir"
    /// `NAME.bc`, the same module as bitcode.
    case bitcode
    /// `NAME.o`, object code for the target, with the weights array when weights are bound.
    case object
    /// `libNAME.a`, that object archived with `ar`.
    case staticLibrary = "static-lib"
    /// `libNAME.so`, that object linked with the C compiler.
    case sharedLibrary = "shared-lib"
    /// `NAME`, the standalone image classifier: the object linked with the generated `main`
    /// and the image code by the C compiler, with libjpeg and libpng.
    case executable
}

/// Returns the C toolchain that links objects for `target`. When `CC` is set, that is `CC`,
/// `CFLAGS` and `AR` from the environment. Otherwise it is `cc` and `ar` for the host, and
/// the GNU cross tools named after the triple for other targets: `aarch64-linux-gnu-gcc`
/// for `aarch64-unknown-linux-gnu`, `arm-linux-gnueabihf-gcc` for `armv7-unknown-linux-gnueabihf`.
func llvmLinkingToolchain(for target: LLVMTarget, environment: [String: String] = ProcessInfo.processInfo.environment) -> CCompiler {
    let configured = CCompiler.fromEnvironment(environment)
    if environment["CC"].map({ !$0.trimmingCharacters(in: .whitespaces).isEmpty }) ?? false || target.isHost {
        return configured
    }
    let prefix = gnuToolPrefix(triple: target.triple)
    let archiver = environment["AR"] == nil ? ["\(prefix)-ar"] : configured.archiver
    return CCompiler(command: ["\(prefix)-gcc"], flags: configured.flags, archiver: archiver)
}

/// Returns the GNU tool prefix of a normalized triple: the vendor `unknown` is dropped and ARM
/// architecture versions become `arm`, as Debian names its cross compilers.
func gnuToolPrefix(triple: String) -> String {
    var parts = triple.split(separator: "-").map(String.init)
    if parts.count >= 3 && (parts[1] == "unknown" || parts[1] == "pc") { parts.remove(at: 1) }
    // Bare-metal triples normalize to ARCH-none-unknown-eabi; the tools are ARCH-none-eabi-*.
    if parts.count >= 3 && parts[parts.count - 2] == "unknown" { parts.remove(at: parts.count - 2) }
    if let architecture = parts.first, architecture.hasPrefix("armv") || architecture.hasPrefix("thumbv") {
        parts[0] = "arm"
    }
    return parts.joined(separator: "-")
}

/// Writes the header (and the weight blob files when weights are bound) into `directory`,
/// created if missing, then the artifact `emit` requests. Returns the paths written, in order.
/// Linking uses `compiler`, or the toolchain `llvmLinkingToolchain` picks for the target.
/// The executable has `labels` compiled in.
@discardableResult
public func writeLLVMCompiledNetwork(_ network: LLVMNetwork, emit: LLVMEmit, directory: String,
                                     compiler: CCompiler? = nil, labels: [String] = []) throws -> [String] {
    try createOutputDirectory(directory)
    let generated = network.generatedC
    let names = network.names
    var written: [String] = []
    func write(_ name: String, _ bytes: [UInt8]) throws {
        try writeFile(directory + "/" + name, bytes)
        written.append(directory + "/" + name)
    }
    try write(names.headerFile, Array(generated.header.utf8))
    if let blob = generated.weightBlob { try write(names.weightsBinaryFile, blob) }
    if let weightsSource = generated.weightsSource { try write(names.weightsSourceFile, Array(weightsSource.utf8)) }

    let toolchain = compiler ?? llvmLinkingToolchain(for: network.target)
    switch emit {
    case .llvmIR:
        let path = directory + "/\(names.function).ll"
        try network.writeIR(to: path)
        written.append(path)
    case .bitcode:
        let path = directory + "/\(names.function).bc"
        try network.writeBitcode(to: path)
        written.append(path)
    case .object:
        let path = directory + "/\(names.function).o"
        try network.writeObject(to: path, includeWeights: true)
        written.append(path)
    case .staticLibrary:
        let scratch = try makeTemporaryDirectory(prefix: "mnc-llvm-archive")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let object = scratch + "/\(names.function).o"
        try network.writeObject(to: object, includeWeights: true)
        let library = directory + "/lib\(names.function).a"
        try toolchain.archive(objects: [object], output: library)
        written.append(library)
    case .sharedLibrary:
        let scratch = try makeTemporaryDirectory(prefix: "mnc-llvm-shared")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let object = scratch + "/\(names.function).o"
        try network.writeObject(to: object, includeWeights: true)
        let library = directory + "/lib\(names.function).so"
        try toolchain.linkSharedLibrary(sources: [object], output: library)
        written.append(library)
    case .executable:
        guard generated.weightBlob != nil else {
            throw MNCError("--emit executable embeds the weights: pass --weights FILE (or --random-weights to try the build)")
        }
        let scratch = try makeTemporaryDirectory(prefix: "mnc-llvm-executable")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let object = scratch + "/\(names.function).o"
        try network.writeObject(to: object, includeWeights: true)
        try writeFile(scratch + "/" + names.headerFile, Array(generated.header.utf8))
        try writeFile(scratch + "/mnc_image.h", Array(EmbeddedImageSource.header.utf8))
        try writeFile(scratch + "/mnc_image.c", Array(EmbeddedImageSource.source.utf8))
        let main = classifierMainSource(graph: network.graph, name: names.function, labels: labels)
        try writeFile(scratch + "/main.c", Array(main.utf8))
        let executable = directory + "/\(names.function)"
        try toolchain.linkExecutable(sources: [scratch + "/main.c", scratch + "/mnc_image.c", object], output: executable,
                                     extraFlags: ["-I", scratch], libraries: ["jpeg", "png"])
        written.append(executable)
    }
    return written
}

private func createOutputDirectory(_ directory: String) throws {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
        guard isDirectory.boolValue else {
            throw MNCError("cannot write to output directory '\(directory)': it is a file")
        }
        return
    }
    do {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    } catch {
        throw MNCError("cannot create output directory '\(directory)': check that its parent exists and is writable")
    }
}

/// Runs a graph through the LLVM backend on this machine and returns the logits. It builds
/// the module for the host (or `options`, which must name the host), links the object with
/// the C driver that `runGeneratedC` uses, and runs it on `input` (in `inputLayout`) with
/// the graph's bound weights.
public func runGeneratedLLVM(graph: Graph, input: [Float], inputLayout: TensorLayout,
                             options: LLVMTargetOptions = LLVMTargetOptions(),
                             compiler: CCompiler = .fromEnvironment()) throws -> [Float] {
    try buildLLVMExecutable(graph: graph, options: options, compiler: compiler).run(input: input, inputLayout: inputLayout)
}

/// Builds the LLVM backend's code for `graph` and links it with the driver program, for
/// several runs of one build.
///
/// Executables are cached in the temporary directory under a hash of the optimized IR, the
/// header, the driver and the toolchain, so the same network is linked once.
public func buildLLVMExecutable(graph: Graph, options: LLVMTargetOptions = LLVMTargetOptions(),
                                compiler: CCompiler = .fromEnvironment()) throws -> LLVMExecutable {
    guard !graph.constants.isEmpty || graph.nodes.allSatisfy({ $0.parameters.isEmpty }) else {
        throw MNCError("the graph has no weights bound: pass --weights FILE")
    }
    let network = try generateLLVM(graph, target: options)
    guard network.target.isHost else {
        throw MNCError("cannot run code built for '\(network.triple)' on this machine: omit --target to run it")
    }
    return LLVMExecutable(path: try buildLLVMDriver(network, compiler: compiler), graph: graph,
                          weightBlob: network.generatedC.weightBlob ?? [])
}

/// The driver program linked with one network's object: `driver WEIGHTS INPUT OUTPUT`.
public struct LLVMExecutable {
    public let path: String
    let graph: Graph
    let weightBlob: [UInt8]

    /// Runs the network once on `input` (in `inputLayout`, reordered to the network's) and
    /// returns the logits.
    public func run(input: [Float], inputLayout: TensorLayout) throws -> [Float] {
        let shape = graph.inputShape
        guard input.count == graph.nodes[0].elementCount else {
            throw MNCError("input has \(input.count) values, the network expects \(graph.nodes[0].elementCount) (\(formatShape(shape)))")
        }
        let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-run")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let weightsPath = directory + "/weights.bin", inputPath = directory + "/input.f32", outputPath = directory + "/output.f32"
        try writeFile(weightsPath, weightBlob)
        let ordered = reorder(input, channels: shape[1], height: shape[2], width: shape[3], from: inputLayout, to: graph.preprocessing.layout)
        try writeFile(inputPath, littleEndianBytes(ordered))

        let (status, output) = try runProcess([path, weightsPath, inputPath, outputPath])
        guard status == 0 else {
            throw MNCError("the LLVM-generated code for '\(graph.name)' failed with exit status \(status): \(firstErrorLine(output, status: status))")
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: outputPath))
        let count = graph.nodes[graph.output].elementCount
        guard data.count == count * 4 else {
            throw MNCError("the LLVM-generated code for '\(graph.name)' wrote \(data.count) bytes, expected \(count * 4)")
        }
        return data.withUnsafeBytes { raw in
            (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }
}

/// Links the network's object with the driver program, or returns the cached executable.
private func buildLLVMDriver(_ network: LLVMNetwork, compiler: CCompiler) throws -> String {
    let names = network.names
    let driver = driverSource(names)
    var hash = FNV1a64()
    for part in compiler.command + compiler.flags + [network.irText, network.generatedC.header, driver] {
        hash.combine(part)
    }
    let cache = NSTemporaryDirectory() + "/mnc-llvm-cache"
    let executable = cache + "/" + names.function + "-" + String(hash.value, radix: 16)
    if FileManager.default.isExecutableFile(atPath: executable) {
        return executable
    }
    try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)

    let directory = try makeTemporaryDirectory(prefix: "mnc-llvm-build")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try writeFile(directory + "/" + names.headerFile, Array(network.generatedC.header.utf8))
    try writeFile(directory + "/driver.c", Array(driver.utf8))
    let object = directory + "/\(names.function).o"
    try network.writeObject(to: object, includeWeights: false)
    let built = directory + "/driver"
    try compiler.linkExecutable(sources: [directory + "/driver.c", object], output: built)
    // Rename is atomic, so a concurrent run finds either no executable or a complete one.
    if rename(built, executable) != 0 {
        throw MNCError("cannot move the linked driver to '\(executable)': \(String(cString: strerror(errno)))")
    }
    return executable
}
