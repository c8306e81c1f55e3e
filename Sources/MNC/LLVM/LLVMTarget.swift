import CLLVM
import Foundation

/// The target the LLVM backend compiles for: a triple, a CPU and a feature list, and the
/// optimization level of LLVM's standard pipeline.
///
/// Defaults: without `triple` the module is built for the host, with the host's CPU and
/// features (`LLVMGetHostCPUName`, `LLVMGetHostCPUFeatures`). A given triple defaults to
/// LLVM's default CPU for that triple (`generic` on most) and no extra features. The CPU
/// `native` means the host's CPU and features.
public struct LLVMTargetOptions: Equatable {
    /// A target triple such as `aarch64-linux-gnu`; nil for the host.
    public var triple: String?
    /// An LLVM CPU name such as `x86-64`, `cortex-a53` or `native`; nil for the default.
    public var cpu: String?
    /// Comma-separated LLVM features, each `+NAME` or `-NAME`, e.g. `+avx2,+fma`.
    public var features: String?
    /// 0 to 3: selects `default<O0>` ... `default<O3>`.
    public var optimizationLevel: Int

    public init(triple: String? = nil, cpu: String? = nil, features: String? = nil, optimizationLevel: Int = 2) {
        self.triple = triple
        self.cpu = cpu
        self.features = features
        self.optimizationLevel = optimizationLevel
    }

    /// The target of the checked-in `Generated/NAME/NAME.ll` files: generic x86-64 at -O2.
    public static let genericX86_64 = LLVMTargetOptions(triple: "x86_64-unknown-linux-gnu", cpu: "x86-64", features: "")
}

/// A validated target: an LLVM target machine plus the facts the kernels are shaped by.
/// Owns the target machine and disposes of it.
final class LLVMTarget {
    let machine: LLVMTargetMachineRef
    /// The normalized triple, e.g. `aarch64-unknown-linux-gnu`.
    let triple: String
    let cpu: String
    let features: String
    let optimizationLevel: Int
    /// True when the triple is the host's apart from the vendor, so the code can run here.
    let isHost: Bool
    /// Float lanes per vector that LLVM's own loop vectorizer picks for this target machine,
    /// 1 when it does not vectorize float loops. The kernels size their register tiles by it.
    let floatLanes: Int

    init(_ options: LLVMTargetOptions) throws {
        initializeLLVMTargets()
        guard (0...3).contains(options.optimizationLevel) else {
            throw MNCError("invalid optimization level \(options.optimizationLevel): expected 0 to 3")
        }
        let hostTriple = takeLLVMString(LLVMGetDefaultTargetTriple())
        let (triple, target) = try lookUpTarget(options.triple ?? hostTriple)
        let (cpu, features) = try cpuAndFeatures(options)
        let machine = try createTargetMachine(target, triple: triple, cpu: cpu, features: features,
                                              level: options.optimizationLevel)

        // The weight blob is little-endian float32 and the arena needs more than 64 KiB, so
        // big-endian and 16-bit targets would build and then compute garbage.
        let dataLayout = LLVMCreateTargetDataLayout(machine)
        let bigEndian = LLVMByteOrder(dataLayout) == LLVMBigEndian
        let pointerBits = LLVMPointerSize(dataLayout) * 8
        LLVMDisposeTargetData(dataLayout)
        guard !bigEndian, pointerBits >= 32 else {
            LLVMDisposeTargetMachine(machine)
            let reason = bigEndian ? "it is big-endian, and the weight blob is little-endian float32"
                : "its pointers have \(pointerBits) bits, and the arena and weights need at least 32"
            throw MNCError("unsupported target '\(options.triple ?? triple)': \(reason); choose a little-endian 32- or 64-bit target")
        }

        self.machine = machine
        self.triple = triple
        self.cpu = cpu
        self.features = features
        self.optimizationLevel = options.optimizationLevel
        // The vendor does not matter for running: x86_64-unknown-linux-gnu runs on an
        // x86_64-pc-linux-gnu host.
        func withoutVendor(_ triple: String) -> [Substring] {
            var parts = triple.split(separator: "-", omittingEmptySubsequences: false)
            if parts.count >= 3 { parts.remove(at: 1) }
            return parts
        }
        self.isHost = withoutVendor(triple) == withoutVendor(takeLLVMString(LLVMNormalizeTargetTriple(hostTriple)))
        do {
            self.floatLanes = try probeFloatLanes(machine: machine, cpu: cpu, features: features)
        } catch {
            LLVMDisposeTargetMachine(machine)
            throw error
        }
    }

    deinit {
        LLVMDisposeTargetMachine(machine)
    }

    /// The architecture, the triple's first component (`x86_64`, `aarch64`, `armv7`, `thumbv7em`).
    var architecture: String {
        String(triple.split(separator: "-").first ?? "")
    }

    /// Vector registers the kernels may fill with accumulators: 32 on AArch64 and with
    /// AVX-512 (when LLVM picks 16 lanes), 16 elsewhere.
    var vectorRegisters: Int {
        architecture.hasPrefix("aarch64") || architecture.hasPrefix("arm64") || floatLanes >= 16 ? 32 : 16
    }
}

/// Normalizes `requested` (`aarch64-linux-gnu` becomes `aarch64-unknown-linux-gnu`) and
/// finds its target among those this LLVM was built with.
private func lookUpTarget(_ requested: String) throws -> (String, LLVMTargetRef) {
    guard !requested.isEmpty, requested.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
        throw MNCError("invalid target triple '\(requested)': expected ARCH-VENDOR-OS[-ENV], e.g. aarch64-linux-gnu")
    }
    let triple = takeLLVMString(LLVMNormalizeTargetTriple(requested))
    var target: LLVMTargetRef?
    var message: UnsafeMutablePointer<CChar>?
    if LLVMGetTargetFromTriple(triple, &target, &message) != 0 {
        let reason = message.map { takeLLVMString($0) } ?? "no target"
        throw MNCError("unknown target triple '\(requested)': \(firstLine(reason)); this LLVM \(llvmVersion) has the targets \(registeredTargetNames().joined(separator: ", "))")
    }
    guard let target, LLVMTargetHasTargetMachine(target) != 0, LLVMTargetHasAsmBackend(target) != 0 else {
        throw MNCError("target triple '\(requested)': LLVM \(llvmVersion) cannot emit object code for it")
    }
    return (triple, target)
}

/// Returns the CPU name and the comma-separated feature string for `options`: the host's
/// CPU and features for the host or `native`, else the given CPU (empty for LLVM's default
/// for the triple, e.g. generic-rv64 for riscv64). Requested features follow the host's,
/// so they override them.
private func cpuAndFeatures(_ options: LLVMTargetOptions) throws -> (String, String) {
    let cpu: String
    var features: [String] = []
    if options.cpu == "native", let triple = options.triple {
        let host = takeLLVMString(LLVMGetDefaultTargetTriple())
        if triple.split(separator: "-").first != host.split(separator: "-").first {
            throw MNCError("--cpu native names the host's CPU, which cannot run '\(triple)': give a CPU of that target, e.g. cortex-a53 for aarch64")
        }
    }
    if options.cpu == "" {
        throw MNCError("invalid CPU name '': expected an LLVM CPU name such as x86-64, cortex-a53 or native")
    }
    if options.cpu == "native" || (options.cpu == nil && options.triple == nil) {
        cpu = takeLLVMString(LLVMGetHostCPUName())
        features = takeLLVMString(LLVMGetHostCPUFeatures()).split(separator: ",").map(String.init)
    } else {
        cpu = options.cpu ?? ""
    }
    func isNameCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || "-_.".contains(character))
    }
    guard cpu.allSatisfy(isNameCharacter) else {
        throw MNCError("invalid CPU name '\(cpu)': expected an LLVM CPU name such as x86-64, cortex-a53 or native")
    }
    if let requested = options.features, !requested.isEmpty {
        // LLVM reads a feature without a sign as disabled, so a sign is required.
        for feature in requested.split(separator: ",", omittingEmptySubsequences: false) {
            guard feature.count >= 2, feature.first == "+" || feature.first == "-", feature.dropFirst().allSatisfy(isNameCharacter) else {
                throw MNCError("invalid feature '\(feature)' in --features '\(requested)': expected a comma-separated list of +NAME or -NAME, e.g. +avx2,+fma")
            }
            features.append(String(feature))
        }
    }
    return (cpu, features.joined(separator: ","))
}

/// Creates the target machine and rejects a CPU or feature that LLVM does not know.
///
/// LLVM reports an unknown CPU or feature only as a warning on standard error, printed while
/// the target machine builds its subtarget, and then ignores it. The capture turns those
/// warnings into errors, and other output passes through.
private func createTargetMachine(_ target: LLVMTargetRef, triple: String, cpu: String, features: String,
                                 level optimizationLevel: Int) throws -> LLVMTargetMachineRef {
    let level: LLVMCodeGenOptLevel
    switch optimizationLevel {
    case 0: level = LLVMCodeGenLevelNone
    case 3: level = LLVMCodeGenLevelAggressive
    default: level = LLVMCodeGenLevelDefault
    }
    let (created, warnings) = captureStandardError {
        LLVMCreateTargetMachine(target, triple, cpu, features, level, LLVMRelocPIC, LLVMCodeModelDefault)
    }
    guard let machine = created else {
        throw MNCError("LLVM could not create a target machine for '\(triple)' with CPU '\(cpu)'")
    }
    var rejection: String?
    var passThrough: [String] = []
    for line in warnings.split(separator: "\n").map(String.init) {
        if line.contains("is not a recognized processor") {
            rejection = rejection ?? "unknown CPU '\(cpu)' for target '\(triple)': LLVM: \(line)"
        } else if line.contains("is not a recognized feature") {
            rejection = rejection ?? "unknown feature for target '\(triple)': LLVM: \(line)"
        } else {
            passThrough.append(line)
        }
    }
    if !passThrough.isEmpty {
        FileHandle.standardError.write(Data((passThrough.joined(separator: "\n") + "\n").utf8))
    }
    let featureList = features.split(separator: ",")
    if cpu == "help" || featureList.contains("+help") || featureList.contains("-help") {
        rejection = rejection ?? "LLVM listed the CPUs and features of '\(triple)' above: pass one of them to --cpu or --features"
    }
    if let rejection {
        LLVMDisposeTargetMachine(machine)
        throw MNCError(rejection)
    }
    return machine
}

/// Registers every target this LLVM was built with, once per process, and installs a fatal
/// error handler that prints LLVM's reason as one `error:` line (LLVM then exits with status 1).
func initializeLLVMTargets() {
    _ = llvmTargetsInitialized
}

private let llvmTargetsInitialized: Bool = {
    LLVMInitializeAllTargetInfos()
    LLVMInitializeAllTargets()
    LLVMInitializeAllTargetMCs()
    LLVMInitializeAllAsmPrinters()
    LLVMInitializeAllAsmParsers()
    LLVMInstallFatalErrorHandler { reason in
        let text = reason.map { String(cString: $0) } ?? "unknown reason"
        fputs("error: LLVM failed: \(firstLine(text))\n", stderr)
        // LLVM 14 aborts after the handler returns when it requests a crash report. A fatal
        // error is an input or configuration error here, so end with status 1 instead.
        exit(1)
    }
    return true
}()

/// Returns the short names of the registered targets (`x86-64`, `aarch64`, `arm`, `thumb`, ...).
func registeredTargetNames() -> [String] {
    var names: [String] = []
    var target = LLVMGetFirstTarget()
    while let current = target {
        if let name = LLVMGetTargetName(current) { names.append(String(cString: name)) }
        target = LLVMGetNextTarget(current)
    }
    return names.sorted()
}

/// Copies a string that LLVM allocated and frees it with `LLVMDisposeMessage`.
func takeLLVMString(_ pointer: UnsafeMutablePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    defer { LLVMDisposeMessage(pointer) }
    return String(cString: pointer)
}

func firstLine(_ text: String) -> String {
    let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    return lines.first ?? text
}

private let standardErrorLock = NSLock()

/// Runs `body` with file descriptor 2 redirected to a temporary file and returns what was
/// written there. A lock serializes captures; output that other threads write meanwhile is
/// captured too, and the callers pass on what they do not recognize.
func captureStandardError<T>(_ body: () -> T) -> (T, String) {
    standardErrorLock.lock()
    defer { standardErrorLock.unlock() }
    fflush(stderr)
    let saved = dup(2)
    guard saved >= 0, let file = tmpfile() else {
        if saved >= 0 { close(saved) }
        return (body(), "")
    }
    defer { fclose(file) }
    guard dup2(fileno(file), 2) >= 0 else {
        close(saved)
        return (body(), "")
    }
    let result = body()
    fflush(stderr)
    dup2(saved, 2)
    close(saved)

    var captured: [UInt8] = []
    rewind(file)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = fread(&buffer, 1, buffer.count, file)
        if count <= 0 { break }
        captured.append(contentsOf: buffer[0..<count])
    }
    return (result, String(decoding: captured, as: UTF8.self))
}

/// Returns the float lanes of the vectors LLVM's loop vectorizer produces on `machine` for a
/// plain element-wise loop: the target machine's own choice from its CPU and features, so the
/// kernels' explicit vectors match what the target prefers (e.g. 8 on AVX2 and on CPUs that
/// prefer 256-bit vectors, 4 on SSE and NEON, 1 where float loops stay scalar).
private func probeFloatLanes(machine: LLVMTargetMachineRef, cpu: String, features: String) throws -> Int {
    let context = LLVMContextCreate()!
    defer { LLVMContextDispose(context) }
    let module = LLVMModuleCreateWithNameInContext("probe", context)!
    defer { LLVMDisposeModule(module) }
    let triple = LLVMGetTargetMachineTriple(machine)
    LLVMSetTarget(module, triple)
    LLVMDisposeMessage(triple)
    let layout = LLVMCreateTargetDataLayout(machine)
    LLVMSetModuleDataLayout(module, layout)
    LLVMDisposeTargetData(layout)

    let builder = LLVMFunctionBuilder(context: context, module: module)
    builder.beginFunction(name: "probe", parameters: [
        LLVMFunctionBuilder.Parameter(name: "x", role: .input(bytes: 4096, alignment: 64)),
        LLVMFunctionBuilder.Parameter(name: "y", role: .output(bytes: 4096, alignment: 64)),
    ], isExported: true, cpu: cpu, features: features)
    builder.loop(to: 1024) { i in
        let value = builder.load(builder.parameter(0), i)
        builder.store(builder.fadd(builder.fmul(value, builder.float(2)), builder.float(1)), builder.parameter(1), i)
    }
    builder.finishFunction()

    try runLLVMPasses(module: module, machine: machine, level: 2)
    var lanes = 1
    var current = LLVMGetFirstFunction(module)
    while let function = current {
        var block = LLVMGetFirstBasicBlock(function)
        while let basicBlock = block {
            var instruction = LLVMGetFirstInstruction(basicBlock)
            while let value = instruction {
                let type = LLVMTypeOf(value)
                if LLVMGetInstructionOpcode(value) == LLVMFMul, LLVMGetTypeKind(type) == LLVMVectorTypeKind {
                    lanes = max(lanes, Int(LLVMGetVectorSize(type)))
                }
                instruction = LLVMGetNextInstruction(value)
            }
            block = LLVMGetNextBasicBlock(basicBlock)
        }
        current = LLVMGetNextFunction(function)
    }
    return lanes
}

/// Runs LLVM's standard pipeline `default<O0>` ... `default<O3>` on the module, for the
/// target machine's cost model.
func runLLVMPasses(module: LLVMModuleRef, machine: LLVMTargetMachineRef, level: Int) throws {
    let options = LLVMCreatePassBuilderOptions()
    defer { LLVMDisposePassBuilderOptions(options) }
    if let error = LLVMRunPasses(module, "default<O\(level)>", machine, options) {
        let message = LLVMGetErrorMessage(error)
        let text = message.map { String(cString: $0) } ?? "unknown error"
        if let message { LLVMDisposeErrorMessage(message) }
        throw MNCError("LLVM's optimization pipeline default<O\(level)> failed: \(firstLine(text))")
    }
}
