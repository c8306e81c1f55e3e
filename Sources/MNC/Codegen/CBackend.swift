import Foundation

/// The C backend: turns a graph into a C99 header and source file with one entry point,
/// `NAME_run(weights, input, output, arena)`, plus the weight blob as a binary file and as
/// a C array.
///
/// Steps:
/// 1. Check that the graph fits the backend (valid, logits at the end, 32-bit indices).
/// 2. Plan the arena (every intermediate value and scratch area at a fixed offset) and the
///    weight blob (every parameter at a fixed offset). Both depend on shapes only.
/// 3. Emit one kernel call per node in graph order; kernels are specialized per shape and
///    shared between nodes of the same shape.
/// 4. Assemble the header (API, sizes, preprocessing facts) and the source.

/// The identifiers of one generated network: `function` prefixes functions and types
/// (`mobilenet_v2_run`, `mobilenet_v2_info`), `macro` prefixes macros (`MOBILENET_V2_INPUT_SIZE`).
public struct CNames: Equatable {
    public var function: String
    public var macro: String

    /// Validates `name` as the prefix of C identifiers.
    public init(_ name: String) throws {
        let scalars = Array(name.unicodeScalars)
        func isLetter(_ s: Unicode.Scalar) -> Bool { (s >= "a" && s <= "z") || (s >= "A" && s <= "Z") || s == "_" }
        func isDigit(_ s: Unicode.Scalar) -> Bool { s >= "0" && s <= "9" }
        guard let first = scalars.first, isLetter(first), scalars.allSatisfy({ isLetter($0) || isDigit($0) }), scalars.count <= 63 else {
            throw MNCError("invalid name '\(name)': expected a C identifier of at most 63 characters (letters, digits and '_', not starting with a digit)")
        }
        guard !cKeywords.contains(name) else {
            throw MNCError("invalid name '\(name)': it is a C keyword; choose another --name")
        }
        function = name
        macro = name.uppercased()
    }

    public var headerFile: String { "\(function).h" }
    public var sourceFile: String { "\(function).c" }
    public var weightsBinaryFile: String { "\(function).weights.bin" }
    public var weightsSourceFile: String { "\(function)_weights.c" }
}

private let cKeywords: Set<String> = [
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum", "extern",
    "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return", "short", "signed",
    "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while",
    "_Bool", "_Complex", "_Imaginary", "_Alignas", "_Alignof", "_Atomic", "_Generic", "_Noreturn",
    "_Static_assert", "_Thread_local",
]

/// The generated files of one network.
public struct GeneratedC {
    public var names: CNames
    /// `NAME.h`: the API, sizes and preprocessing facts.
    public var header: String
    /// `NAME.c`: the kernels and `NAME_run`.
    public var source: String
    /// `NAME.weights.bin`; nil when the graph has no bound weights.
    public var weightBlob: [UInt8]?
    /// `NAME_weights.c`, the blob as a C array; nil when the graph has no bound weights.
    public var weightsSource: String?
    /// Bytes of the arena `NAME_run` needs.
    public var arenaSize: Int
    /// Bytes of the weight blob (also when the blob itself was not written).
    public var weightsSize: Int
    /// The maximum number of threads the code runs on (`mnc compile --threads`). Above 1 the
    /// code includes the pthreads pool, so every program that links it needs `-pthread`.
    public var threads: Int = 1

    /// The files to write, as (file name, contents), in a fixed order.
    public var files: [(name: String, contents: [UInt8])] {
        var files: [(name: String, contents: [UInt8])] = [
            (names.headerFile, Array(header.utf8)),
            (names.sourceFile, Array(source.utf8)),
        ]
        if let weightBlob { files.append((names.weightsBinaryFile, weightBlob)) }
        if let weightsSource { files.append((names.weightsSourceFile, Array(weightsSource.utf8))) }
        return files
    }
}

/// Generates the C files for `graph` as given (this function runs no optimization pass).
/// `name` prefixes every exported identifier and defaults to the graph's name. With `threads`
/// above 1 the code also runs on a pool of up to that many threads (see CThreadPool.swift); with
/// 1 it has no threading code. Throws an `MNCError` for a graph the backend cannot compile.
public func generateC(_ graph: Graph, name: String? = nil, threads: Int = 1) throws -> GeneratedC {
    let names = try CNames(name ?? graph.name)
    guard (1...maximumCThreads).contains(threads) else {
        throw MNCError("invalid thread count \(threads): expected 1...\(maximumCThreads)")
    }
    try checkGraphForC(graph)

    let plan = planArena(graph, alignment: cArenaAlignment, scratchBytes: { cScratchBytes($0, threads: threads) })
    try verifyPlan(plan)
    let blob = planWeightBlob(graph)

    var emitter = CNodeEmitter(graph: graph, plan: plan, blob: blob)
    emitter.parts = threads
    var calls = CWriter()
    for index in graph.nodes.indices {
        try emitter.emitCall(for: index, into: &calls)
    }

    let header = cHeader(graph: graph, names: names, plan: plan, blob: blob, needsMath: emitter.library.needsMath, threads: threads)
    let source = cSource(graph: graph, names: names, plan: plan, blob: blob, library: emitter.library, calls: calls, threads: threads)
    var weightBlob: [UInt8]?
    var weightsSource: String?
    if !graph.constants.isEmpty {
        let bytes = try serializeWeightBlob(graph, layout: blob)
        weightBlob = bytes
        weightsSource = weightsCSource(bytes, names: names, headerFile: names.headerFile)
    }
    return GeneratedC(names: names, header: header, source: source, weightBlob: weightBlob, weightsSource: weightsSource,
                      arenaSize: plan.size, weightsSize: blob.size, threads: threads)
}

/// The maximum thread count of a generated network. Each thread adds a part to every kernel's
/// split and its own scratch areas to the arena.
public let maximumCThreads = 64

/// The alignment of the arena and of every buffer in it: one cache line, and a full AVX-512 vector.
let cArenaAlignment = 64

/// Returns the scratch bytes a node's kernel needs while it runs.
func cScratchBytes(_ node: Node) -> Int {
    switch node.op {
    case .batchNorm: return node.shape[1] * 4
    case .squeezeExcite(let se): return CKernelLibrary.squeezeExciteScratchFloats(se).total * 4
    case .fusedBlock(let block): return fusedBlockSchedule(node, block).scratchFloats * 4
    default: return 0
    }
}

private func checkGraphForC(_ graph: Graph) throws {
    try verify(graph)
    let output = graph.outputShape
    guard output.count == 2 || (output.count == 4 && output[2] == 1 && output[3] == 1) else {
        throw MNCError("the C backend needs a network that ends in logits [1, N], but '\(graph.name)' ends in \(output): end the spec with 'pool avg' and a classifier")
    }
    var root = graph.output
    while graph.nodes[root].op == .flatten || graph.nodes[root].op.mnemonic == "dropout" {
        root = graph.nodes[root].inputs[0]
    }
    guard root != 0 else {
        throw MNCError("the network '\(graph.name)' computes nothing: its output is its input")
    }
    // Kernels index tensors with C `int`, so every tensor must have fewer than 2^31 elements.
    for (index, node) in graph.nodes.enumerated() {
        for count in [node.elementCount] + node.parameters.map(\.elementCount) where count > Int(Int32.max) {
            throw MNCError("node \(index) '\(node.name)' has a tensor of \(count) values; the C backend supports at most \(Int32.max) values per tensor: reduce --resolution or --width-multiplier")
        }
    }
}

/// Emits the kernel call of each node, defining the kernels it needs on the way.
struct CNodeEmitter {
    let graph: Graph
    let plan: ArenaPlan
    let blob: WeightBlobLayout
    var library = CKernelLibrary()
    /// The parts every kernel's work is split into: the build's thread count. With 1 the
    /// kernels are the single-thread ones and the calls have no barriers.
    var parts = 1
    /// Calls emitted so far by `emitThreadedCall`, which puts a barrier before all but the first.
    var threadedCalls = 0

    /// Returns how node `index`'s value is stored: the input in the caller's layout, everything else NHWC.
    func tensor(_ index: Int) -> CTensor {
        let layout: TensorLayout = plan.storage[index] == .input ? graph.preprocessing.layout : .nhwc
        return CTensor(shape: graph.nodes[index].shape, layout: layout)
    }

    func value(_ index: Int) -> String {
        switch plan.storage[index] {
        case .input: return "input"
        case .output: return "output"
        case .arena(let offset): return offset == 0 ? "(float *)a" : "(float *)(a + \(offset))"
        }
    }

    func scratch(_ index: Int) throws -> String {
        guard let offset = plan.scratchOffset[index] else {
            throw MNCError("internal error: node \(index) has no scratch area in the arena plan")
        }
        return offset == 0 ? "(float *)a" : "(float *)(a + \(offset))"
    }

    func weight(_ node: Node, _ role: String, layout expected: WeightLayout? = nil) throws -> String {
        guard let parameter = node.parameter(role), let offset = blob.offset(of: parameter.key) else {
            throw MNCError("node '\(node.name)' has no parameter '\(role)'")
        }
        if let expected, parameter.layout != expected {
            throw MNCError("parameter '\(parameter.key)' has layout '\(parameter.layout.rawValue)'; the C backend reads it as '\(expected.rawValue)'")
        }
        return offset == 0 ? "w" : "w + \(offset / 4)"
    }

    mutating func emitCall(for index: Int, into calls: inout CWriter) throws {
        if parts > 1 {
            return try emitThreadedCall(for: index, into: &calls)
        }
        let node = graph.nodes[index]
        let output = CTensor(shape: node.shape, layout: .nhwc)
        let kernel: String
        var arguments: [String]
        switch node.op {
        case .input, .flatten, .dropout:
            // The input is the caller's buffer; flatten and dropout alias their input's storage.
            return
        case .conv2d(let conv):
            (kernel, arguments) = try convolution(conv, node: node, output: output)
        case .batchNorm(let epsilon):
            kernel = library.batchNorm(epsilon: epsilon, input: tensor(node.inputs[0]), output: output)
            arguments = [value(node.inputs[0])]
            for role in ["weight", "bias", "running_mean", "running_var"] {
                arguments.append(try weight(node, role))
            }
            arguments.append(try scratch(index))
        case .activation(let activation):
            kernel = library.activation(activation, input: tensor(node.inputs[0]), output: output)
            arguments = [value(node.inputs[0])]
        case .add:
            kernel = library.add(tensor(node.inputs[0]), tensor(node.inputs[1]), output: output)
            arguments = [value(node.inputs[0]), value(node.inputs[1])]
        case .globalAveragePool:
            kernel = library.globalAveragePool(input: tensor(node.inputs[0]))
            arguments = [value(node.inputs[0])]
        case .linear(let linear):
            kernel = library.linear(linear)
            arguments = [value(node.inputs[0]), try weight(node, "weight", layout: .pytorch)]
            if linear.hasBias { arguments.append(try weight(node, "bias")) }
        case .channelScale:
            kernel = library.channelScale(input: tensor(node.inputs[0]), output: output)
            arguments = [value(node.inputs[0]), value(node.inputs[1])]
        case .squeezeExcite(let se):
            kernel = library.squeezeExcite(se, input: tensor(node.inputs[0]), output: output)
            arguments = [value(node.inputs[0]),
                         try weight(node, "fc1.weight", layout: .pytorch), try weight(node, "fc1.bias"),
                         try weight(node, "fc2.weight", layout: .pytorch), try weight(node, "fc2.bias"),
                         try scratch(index)]
        case .fusedBlock(let block):
            kernel = try library.fusedBlock(node, block, input: tensor(node.inputs[0]), output: output,
                                            residual: block.project.hasResidual ? tensor(node.inputs[1]) : nil)
            arguments = [value(node.inputs[0])]
            for role in block.cParameterRoles {
                arguments.append(try weight(node, role))
            }
            if block.project.hasResidual { arguments.append(value(node.inputs[1])) }
            arguments.append(try scratch(index))
        }
        arguments.append(value(index))

        let ops = node.fusedOps.joined(separator: " + ")
        let comment = "%\(index) \(node.name): \(ops) -> \(node.shape.dropFirst().map(String.init).joined(separator: "x"))"
        calls.line("/* \(comment.replacingOccurrences(of: "*/", with: "* /")) */")
        calls.line("\(kernel)(\(arguments.joined(separator: ", ")));")
    }

    private mutating func convolution(_ conv: Conv2D, node: Node, output: CTensor) throws -> (String, [String]) {
        guard let weightParameter = node.parameter("weight") else {
            throw MNCError("node '\(node.name)' has no parameter 'weight'")
        }
        let kernel = library.convolution(conv, weightLayout: weightParameter.layout, input: tensor(node.inputs[0]), output: output,
                                         residual: conv.hasResidual ? tensor(node.inputs[1]) : nil)
        var arguments = [value(node.inputs[0]), try weight(node, "weight")]
        if conv.hasBias { arguments.append(try weight(node, "bias")) }
        if conv.hasResidual { arguments.append(value(node.inputs[1])) }
        return (kernel, arguments)
    }
}
