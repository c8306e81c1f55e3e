/// `mnc compile --backend llvm`: the same graph pipeline as the C backend, then the module
/// built, optimized at the `-O` level and emitted for the host or `--target`.
func compileWithLLVM(_ arguments: ParsedArguments, output: CommandOutput) throws -> Int32 {
    let emitText = try arguments.choice("emit", LLVMEmit.allCases.map(\.rawValue), default: LLVMEmit.object.rawValue)
    let emit = LLVMEmit(rawValue: emitText) ?? .object
    guard let directory = arguments.value("o") else {
        throw MNCError("'mnc compile' needs an output directory: pass -o DIR")
    }
    let level = Int(arguments.value("optimization") ?? "2") ?? 2
    let options = LLVMTargetOptions(triple: arguments.value("target"), cpu: arguments.value("cpu"),
                                    features: arguments.value("features"), optimizationLevel: level)
    var (_, graph) = try loadGraph(arguments, command: "compile")
    graph = try bindSelectedWeights(arguments, to: graph, output: output)
    graph = try optimize(graph, options: arguments)
    let labels = try classifierLabels(arguments, graph: graph, buildsExecutable: emit == .executable)
    let network = try generateLLVM(graph, name: arguments.value("name"), target: options)
    for path in try writeLLVMCompiledNetwork(network, emit: emit, directory: directory, labels: labels) {
        output.write("wrote \(path)\n")
    }
    return 0
}
