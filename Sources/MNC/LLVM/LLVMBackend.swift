import CLLVM
import Foundation

/// The LLVM backend: builds the network as an LLVM module in memory through LLVM's C API,
/// verifies it, runs LLVM's standard optimization pipeline and emits IR, bitcode or object
/// code for the host or another target.
///
/// The module defines the C backend's API exactly: `NAME_run(weights, input, output, arena)`
/// with the same checks and return codes, `NAME_get_info()` with the same struct contents,
/// the same weight blob layout and arena plan. The header is the C backend's header, so
/// every C caller works with either backend.
public final class LLVMNetwork {
    let context: LLVMContextRef
    let module: LLVMModuleRef
    let target: LLVMTarget
    /// The graph the module was built from (the classifier program needs its preprocessing).
    let graph: Graph
    /// The C backend's files for the same graph: the header, the weight blob and its C array.
    public let generatedC: GeneratedC
    private var hasWeightsArray = false

    fileprivate init(context: LLVMContextRef, module: LLVMModuleRef, target: LLVMTarget, graph: Graph, generatedC: GeneratedC) {
        self.context = context
        self.module = module
        self.target = target
        self.graph = graph
        self.generatedC = generatedC
    }

    deinit {
        LLVMDisposeModule(module)
        LLVMContextDispose(context)
    }

    public var names: CNames { generatedC.names }

    /// The normalized target triple the module was built for.
    public var triple: String { target.triple }

    /// Float lanes of the kernels' vectors, as LLVM's vectorizer chose them for the target.
    public var vectorLanes: Int { target.floatLanes }

    /// The module as textual LLVM IR.
    public var irText: String {
        takeLLVMString(LLVMPrintModuleToString(module))
    }

    /// Writes the module as textual IR (`NAME.ll`).
    public func writeIR(to path: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        if LLVMPrintModuleToFile(module, path, &message) != 0 {
            throw MNCError("cannot write '\(path)': \(firstLine(takeLLVMString(message)))")
        }
    }

    /// Writes the module as LLVM bitcode (`NAME.bc`).
    public func writeBitcode(to path: String) throws {
        if LLVMWriteBitcodeToFile(module, path) != 0 {
            throw MNCError("cannot write '\(path)': LLVM could not write the bitcode")
        }
    }

    /// Compiles the module into an object file for the target. With `includeWeights` and
    /// bound weights, the object also defines `NAME_weights` and `NAME_weights_size`, as the
    /// C backend's object does. Code generation changes the module in place, so write IR or
    /// bitcode before calling this.
    public func writeObject(to path: String, includeWeights: Bool) throws {
        if includeWeights, let blob = generatedC.weightBlob, !hasWeightsArray {
            addWeightsArray(blob)
            hasWeightsArray = true
        }
        var message: UnsafeMutablePointer<CChar>?
        var mutablePath = Array(path.utf8CString)
        let failed = mutablePath.withUnsafeMutableBufferPointer { buffer in
            LLVMTargetMachineEmitToFile(target.machine, module, buffer.baseAddress, LLVMObjectFile, &message) != 0
        }
        if failed {
            throw MNCError("LLVM failed to emit '\(path)' for '\(target.triple)': \(firstLine(takeLLVMString(message)))")
        }
    }

    /// Defines `const unsigned char NAME_weights[size + 1]` (64-byte aligned, with the
    /// trailing NUL the C array has) and `const size_t NAME_weights_size`.
    private func addWeightsArray(_ blob: [UInt8]) {
        let code = LLVMFunctionBuilder(context: context, module: module)
        let array = blob.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { characters in
                LLVMConstStringInContext(context, characters.baseAddress, UInt32(blob.count), 0)!
            }
        }
        let weights = LLVMAddGlobal(module, LLVMTypeOf(array), "\(names.function)_weights")!
        LLVMSetInitializer(weights, array)
        LLVMSetGlobalConstant(weights, 1)
        LLVMSetAlignment(weights, UInt32(WeightBlobLayout.alignment))
        let size = LLVMAddGlobal(module, code.indexType, "\(names.function)_weights_size")!
        LLVMSetInitializer(size, LLVMConstInt(code.indexType, UInt64(blob.count), 0))
        LLVMSetGlobalConstant(size, 1)
    }
}

/// Builds, verifies and optimizes the LLVM module for `graph` as given (this function runs
/// no graph optimization pass). `name` prefixes every exported symbol and defaults to the
/// graph's name. Throws an `MNCError` for a graph the backend cannot compile, an invalid
/// target, or a failure inside LLVM.
public func generateLLVM(_ graph: Graph, name: String? = nil, target options: LLVMTargetOptions) throws -> LLVMNetwork {
    // The C backend checks the graph, plans the arena and the blob, and writes the header.
    let generatedC = try generateC(graph, name: name)
    let plan = planArena(graph, alignment: cArenaAlignment, scratchBytes: cScratchBytes)
    try verifyPlan(plan)
    let blob = planWeightBlob(graph)
    let target = try LLVMTarget(options)

    let context = LLVMContextCreate()!
    let module = LLVMModuleCreateWithNameInContext(generatedC.names.function, context)!
    let network = LLVMNetwork(context: context, module: module, target: target, graph: graph, generatedC: generatedC)
    LLVMSetTarget(module, target.triple)
    let layout = LLVMCreateTargetDataLayout(target.machine)
    LLVMSetModuleDataLayout(module, layout)
    LLVMDisposeTargetData(layout)

    let code = LLVMFunctionBuilder(context: context, module: module)
    defineInfo(code: code, graph: graph, names: generatedC.names, plan: plan, blob: blob, target: target)
    try defineRun(code: code, graph: graph, names: generatedC.names, plan: plan, blob: blob, target: target)

    var message: UnsafeMutablePointer<CChar>?
    if LLVMVerifyModule(module, LLVMReturnStatusAction, &message) != 0 {
        throw MNCError("internal error: LLVM's verifier rejected the module for '\(graph.name)': \(firstLine(takeLLVMString(message)))")
    }
    if let message { LLVMDisposeMessage(message) }
    try runLLVMPasses(module: module, machine: target.machine, level: target.optimizationLevel)
    return network
}

/// Defines the `NAME_info` constant and `NAME_get_info()`, with the fields of the header's
/// struct in its order. The struct layout follows the target's C ABI through its data layout.
private func defineInfo(code: LLVMFunctionBuilder, graph: Graph, names: CNames, plan: ArenaPlan, blob: WeightBlobLayout,
                        target: LLVMTarget) {
    let context = code.context, module = code.module
    let size = code.indexType, int = code.int32Type, float = code.floatType, string = code.bytePointerType
    let floats3 = LLVMArrayType(float, 3)!
    var fields: [LLVMTypeRef?] = [string, int, int, int, size, string, size, size, size, size, size, string, floats3, floats3, int, float]
    let type = LLVMStructCreateNamed(context, "\(names.function)_info")!
    LLVMStructSetBody(type, &fields, UInt32(fields.count), 0)

    func text(_ value: String, _ label: String) -> LLVMValue {
        let bytes = Array(value.utf8)
        let constant = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { LLVMConstStringInContext(context, $0.baseAddress, UInt32(bytes.count), 0)! }
        }
        let global = LLVMAddGlobal(module, LLVMTypeOf(constant), ".str.\(label)")!
        LLVMSetInitializer(global, constant)
        LLVMSetGlobalConstant(global, 1)
        LLVMSetLinkage(global, LLVMPrivateLinkage)
        LLVMSetUnnamedAddress(global, LLVMGlobalUnnamedAddr)
        LLVMSetAlignment(global, 1)
        return LLVMConstBitCast(global, string)
    }
    func sizeValue(_ value: Int) -> LLVMValue { LLVMConstInt(size, UInt64(value), 0) }
    func intValue(_ value: Int) -> LLVMValue { LLVMConstInt(int, UInt64(bitPattern: Int64(value)), 1) }
    func floatArray(_ values: [Double]) -> LLVMValue {
        var elements: [LLVMValue?] = values.map { LLVMConstReal(float, Double(Float($0))) }
        return LLVMConstArray(float, &elements, 3)
    }

    let preprocessing = graph.preprocessing
    let shape = graph.inputShape
    var values: [LLVMValue?] = [
        text(graph.name, "name"),
        intValue(shape[1]), intValue(shape[2]), intValue(shape[3]),
        sizeValue(shape[1] * shape[2] * shape[3]),
        text(preprocessing.layout.rawValue.uppercased(), "layout"),
        sizeValue(graph.nodes[graph.output].elementCount),
        sizeValue(plan.size), sizeValue(plan.alignment),
        sizeValue(blob.size), sizeValue(WeightBlobLayout.alignment),
        text("RGB", "channel_order"),
        floatArray(preprocessing.mean), floatArray(preprocessing.std),
        intValue(preprocessing.resizeShorterSide ?? 0),
        LLVMConstReal(float, Double(Float(preprocessing.cropFraction))),
    ]
    let description = LLVMAddGlobal(module, type, "\(names.function)_description")!
    LLVMSetInitializer(description, LLVMConstNamedStruct(type, &values, UInt32(values.count)))
    LLVMSetGlobalConstant(description, 1)
    LLVMSetLinkage(description, LLVMInternalLinkage)

    var noParameters: [LLVMTypeRef?] = []
    let functionType = LLVMFunctionType(LLVMPointerType(type, 0), &noParameters, 0, 0)
    let function = LLVMAddFunction(module, "\(names.function)_get_info", functionType)!
    code.addFunctionAttribute(function, "nounwind")
    if !target.cpu.isEmpty { code.addStringAttribute(function, "target-cpu", target.cpu) }
    if !target.features.isEmpty { code.addStringAttribute(function, "target-features", target.features) }
    LLVMPositionBuilderAtEnd(code.builder, LLVMAppendBasicBlockInContext(context, function, "entry"))
    LLVMBuildRet(code.builder, description)
}

/// Defines `int NAME_run(const void *weights, const float *input, float *output, void *arena)`:
/// the argument checks of the C backend, then one kernel call per node in graph order.
private func defineRun(code: LLVMFunctionBuilder, graph: Graph, names: CNames, plan: ArenaPlan, blob: WeightBlobLayout,
                       target: LLVMTarget) throws {
    code.beginFunction(name: "\(names.function)_run", parameters: [
        .init(name: "weights", role: .bytes), .init(name: "input", role: .floats),
        .init(name: "output", role: .floats), .init(name: "arena", role: .bytes),
    ], returnsInt: true, isExported: true, cpu: target.cpu, features: target.features)
    let weights = code.parameter(0), input = code.parameter(1), output = code.parameter(2), arena = code.parameter(3)

    // A network without parameters or intermediate values ignores those pointers.
    let usesWeights = blob.size > 0, usesArena = plan.size > 0
    var pointers: [(LLVMValue, Int)] = [(input, 4), (output, 4)]
    if usesWeights { pointers.insert((weights, WeightBlobLayout.alignment), at: 0) }
    if usesArena { pointers.append((arena, plan.alignment)) }
    let addresses = pointers.map { pointer, alignment in
        (LLVMBuildPtrToInt(code.builder, pointer, code.indexType, "")!, alignment)
    }
    let isNull = addresses.map { code.compare(LLVMIntEQ, $0.0, code.index(0)) }.reduce(nil as LLVMValue?) { partial, next in
        partial.map { code.or($0, next) } ?? next
    }
    let isMisaligned = addresses.map { address, alignment in
        code.compare(LLVMIntNE, code.and(address, code.index(alignment - 1)), code.index(0))
    }.reduce(nil as LLVMValue?) { partial, next in partial.map { code.or($0, next) } ?? next }
    returnIf(code, isNull, status: 1)
    returnIf(code, isMisaligned, status: 2)

    let kernels = LLVMKernelLibrary(code: code, target: target)
    let floatWeights = LLVMBuildBitCast(code.builder, weights, code.floatPointerType, "w")!
    let emitter = LLVMNodeEmitter(code: code, kernels: kernels, graph: graph, plan: plan, blob: blob,
                                  input: input, output: output, arena: arena, weights: floatWeights)
    for index in graph.nodes.indices {
        try emitter.emitCall(for: index)
    }
    LLVMBuildRet(code.builder, LLVMConstInt(code.int32Type, 0, 0))
    code.finishFunction()
}

private func returnIf(_ code: LLVMFunctionBuilder, _ condition: LLVMValue?, status: Int) {
    guard let condition else { return }
    let fail = code.appendBlock("fail"), next = code.appendBlock("checked")
    LLVMBuildCondBr(code.builder, condition, fail, next)
    LLVMPositionBuilderAtEnd(code.builder, fail)
    LLVMBuildRet(code.builder, LLVMConstInt(code.int32Type, UInt64(status), 0))
    LLVMPositionBuilderAtEnd(code.builder, next)
}

/// Emits the kernel call of each node inside `NAME_run`, choosing kernels as the C backend does.
private struct LLVMNodeEmitter {
    let code: LLVMFunctionBuilder
    let kernels: LLVMKernelLibrary
    let graph: Graph
    let plan: ArenaPlan
    let blob: WeightBlobLayout
    let input: LLVMValue
    let output: LLVMValue
    let arena: LLVMValue
    let weights: LLVMValue

    /// How node `index`'s value is stored: the input in the caller's layout, everything else NHWC.
    func tensor(_ index: Int) -> CTensor {
        let layout: TensorLayout = plan.storage[index] == .input ? graph.preprocessing.layout : .nhwc
        return CTensor(shape: graph.nodes[index].shape, layout: layout)
    }

    /// The pointer to node `index`'s value and the alignment known for it: the caller's
    /// buffers are only float-aligned, arena offsets are multiples of the arena alignment.
    func value(_ index: Int) -> (LLVMValue, Int) {
        switch plan.storage[index] {
        case .input: return (input, 4)
        case .output: return (output, 4)
        case .arena(let offset): return (code.bytePointer(arena, offset: offset), plan.alignment)
        }
    }

    func scratch(_ index: Int) throws -> (LLVMValue, Int) {
        guard let offset = plan.scratchOffset[index] else {
            throw MNCError("internal error: node \(index) has no scratch area in the arena plan")
        }
        return (code.bytePointer(arena, offset: offset), plan.alignment)
    }

    func weight(_ node: Node, _ role: String, layout expected: WeightLayout? = nil) throws -> (LLVMValue, Int) {
        guard let parameter = node.parameter(role), let offset = blob.offset(of: parameter.key) else {
            throw MNCError("node '\(node.name)' has no parameter '\(role)'")
        }
        if let expected, parameter.layout != expected {
            throw MNCError("parameter '\(parameter.key)' has layout '\(parameter.layout.rawValue)'; the LLVM backend reads it as '\(expected.rawValue)'")
        }
        return (code.element(weights, offset / 4), WeightBlobLayout.alignment)
    }

    func emitCall(for index: Int) throws {
        let node = graph.nodes[index]
        let output = CTensor(shape: node.shape, layout: .nhwc)
        var arguments: [(LLVMValue, Int)]
        let makeKernel: ([Int]) -> LLVMValue
        switch node.op {
        case .input, .flatten, .dropout:
            // The input is the caller's buffer; flatten and dropout alias their input's storage.
            return
        case .conv2d(let conv):
            (arguments, makeKernel) = try convolution(conv, node: node, output: output)
        case .batchNorm(let epsilon):
            arguments = [value(node.inputs[0])]
            for role in ["weight", "bias", "running_mean", "running_var"] {
                arguments.append(try weight(node, role))
            }
            arguments.append(try scratch(index))
            let input = tensor(node.inputs[0])
            makeKernel = { kernels.batchNorm(epsilon: epsilon, input: input, output: output, alignments: $0) }
        case .activation(let activation):
            arguments = [value(node.inputs[0])]
            let input = tensor(node.inputs[0])
            makeKernel = { kernels.activation(activation, input: input, output: output, alignments: $0) }
        case .add:
            arguments = [value(node.inputs[0]), value(node.inputs[1])]
            let lhs = tensor(node.inputs[0]), rhs = tensor(node.inputs[1])
            makeKernel = { kernels.add(lhs, rhs, output: output, alignments: $0) }
        case .globalAveragePool:
            arguments = [value(node.inputs[0])]
            let input = tensor(node.inputs[0])
            makeKernel = { kernels.globalAveragePool(input: input, alignments: $0) }
        case .linear(let linear):
            arguments = [value(node.inputs[0]), try weight(node, "weight", layout: .pytorch)]
            if linear.hasBias { arguments.append(try weight(node, "bias")) }
            makeKernel = { kernels.linear(linear, alignments: $0) }
        case .channelScale:
            arguments = [value(node.inputs[0]), value(node.inputs[1])]
            let input = tensor(node.inputs[0])
            makeKernel = { kernels.channelScale(input: input, output: output, alignments: $0) }
        case .squeezeExcite(let se):
            arguments = [value(node.inputs[0]),
                         try weight(node, "fc1.weight", layout: .pytorch), try weight(node, "fc1.bias"),
                         try weight(node, "fc2.weight", layout: .pytorch), try weight(node, "fc2.bias"),
                         try scratch(index)]
            let input = tensor(node.inputs[0])
            makeKernel = { kernels.squeezeExcite(se, input: input, output: output, alignments: $0) }
        case .fusedBlock(let block):
            let schedule = fusedBlockSchedule(node, block)
            guard schedule.streams else {
                try emitStagewiseBlock(index, block, schedule: schedule)
                return
            }
            arguments = [value(node.inputs[0])]
            for role in block.cParameterRoles {
                arguments.append(try weight(node, role))
            }
            let hasResidual = block.project.hasResidual
            if hasResidual { arguments.append(value(node.inputs[1])) }
            arguments.append(try scratch(index))
            let input = tensor(node.inputs[0])
            makeKernel = { kernels.fusedBlock(node, block, schedule: schedule, input: input, output: output,
                                              hasResidual: hasResidual, alignments: $0) }
        }
        arguments.append(value(index))
        let kernel = makeKernel(arguments.map(\.1))
        code.call(kernel, arguments.map(\.0))
    }

    /// Picks the kernel of a convolution node as the C backend does (see `convolutionKernel`).
    private func convolution(_ conv: Conv2D, node: Node, output: CTensor) throws -> ([(LLVMValue, Int)], ([Int]) -> LLVMValue) {
        guard let weightParameter = node.parameter("weight") else {
            throw MNCError("node '\(node.name)' has no parameter 'weight'")
        }
        let makeKernel = convolutionKernel(conv, weightLayout: weightParameter.layout, input: tensor(node.inputs[0]), output: output,
                                           residual: conv.hasResidual ? tensor(node.inputs[1]) : nil)
        var arguments = [value(node.inputs[0]), try weight(node, "weight")]
        if conv.hasBias { arguments.append(try weight(node, "bias")) }
        if conv.hasResidual { arguments.append(value(node.inputs[1])) }
        return (arguments, makeKernel)
    }

    /// Returns the kernel maker of a convolution: the pointwise GEMM and the depthwise kernel for
    /// the packed forms on NHWC data, the pixel-blocked kernel for other packed forms with groups
    /// 1 (the first layer), and direct loops for everything else.
    private func convolutionKernel(_ conv: Conv2D, weightLayout layout: WeightLayout, input: CTensor, output: CTensor,
                                   residual: CTensor?) -> ([Int]) -> LLVMValue {
        let channelsLast = input.isChannelsLast && (residual?.isChannelsLast ?? true)
        let unpadded = conv.padding == Padding(top: 0, left: 0, bottom: 0, right: 0)
        let kernels = self.kernels
        let gemmLayouts: Set<WeightLayout> = [.inputOutput, .inputOutputPanels]
        if conv.isPointwise && conv.strideHeight == 1 && conv.strideWidth == 1 && unpadded && gemmLayouts.contains(layout) && channelsLast {
            return { kernels.pointwiseConvolution(input: input, outputChannels: conv.outChannels, weightLayout: layout,
                                                  hasBias: conv.hasBias, activation: conv.activation,
                                                  hasResidual: conv.hasResidual, alignments: $0) }
        }
        if conv.isDepthwise && layout == .depthwiseHWC && channelsLast {
            return { kernels.depthwiseConvolution(conv, input: input, output: output, hasResidual: conv.hasResidual, alignments: $0) }
        }
        if conv.groups == 1 && (layout == .hwio || gemmLayouts.contains(layout)) && (residual?.isChannelsLast ?? true) {
            return { kernels.convolutionByPixels(conv, weightLayout: layout, input: input, output: output,
                                                 hasResidual: conv.hasResidual, alignments: $0) }
        }
        return { kernels.directConvolution(conv, weightLayout: layout, input: input, output: output,
                                           residual: residual, alignments: $0) }
    }

    /// Emits a fused block that does not stream, as the C kernel runs it: its stages one after
    /// another on whole tensors in the node's scratch area (the expanded tensor, then the
    /// depthwise output, then the squeeze-excitation's vectors and gated output).
    private func emitStagewiseBlock(_ index: Int, _ block: FusedBlock, schedule: FusedBlockSchedule) throws {
        let node = graph.nodes[index]
        let (area, alignment) = try scratch(index)
        let channels = block.depthwise.inChannels
        let expanded = code.element(area, 0)
        let filtered = code.element(area, schedule.ringFloats)
        let excitationStart = schedule.ringFloats + schedule.bandFloats
        var stageInput = tensor(node.inputs[0]), stageValue = value(node.inputs[0])
        for (prefix, conv) in block.stages {
            if prefix == "project", let se = block.squeezeExcite {
                let gated = (code.element(area, excitationStart + schedule.excitationFloats), alignment)
                let arguments = [stageValue, try weight(node, "se.fc1.weight", layout: .pytorch), try weight(node, "se.fc1.bias"),
                                 try weight(node, "se.fc2.weight", layout: .pytorch), try weight(node, "se.fc2.bias"),
                                 (code.element(area, excitationStart), alignment), gated]
                let kernel = kernels.squeezeExcite(se, input: stageInput, output: stageInput, alignments: arguments.map(\.1))
                code.call(kernel, arguments.map(\.0))
                stageValue = gated
            }
            guard let layout = node.parameter("\(prefix).weight")?.layout else {
                throw MNCError("node '\(node.name)' has no parameter '\(prefix).weight'")
            }
            let stageOutput: CTensor, target: (LLVMValue, Int)
            switch prefix {
            case "expand":
                stageOutput = CTensor(shape: [1, channels, block.expandedHeight, block.expandedWidth], layout: .nhwc)
                target = (expanded, alignment)
            case "depthwise":
                stageOutput = CTensor(shape: [1, channels, node.shape[2], node.shape[3]], layout: .nhwc)
                target = (filtered, alignment)
            default:
                stageOutput = CTensor(shape: node.shape, layout: .nhwc)
                target = value(index)
            }
            let residual = conv.hasResidual ? tensor(node.inputs[1]) : nil
            let makeKernel = convolutionKernel(conv, weightLayout: layout, input: stageInput, output: stageOutput, residual: residual)
            var arguments = [stageValue, try weight(node, "\(prefix).weight")]
            if conv.hasBias { arguments.append(try weight(node, "\(prefix).bias")) }
            if conv.hasResidual { arguments.append(value(node.inputs[1])) }
            arguments.append(target)
            code.call(makeKernel(arguments.map(\.1)), arguments.map(\.0))
            stageInput = stageOutput
            stageValue = target
        }
    }
}
