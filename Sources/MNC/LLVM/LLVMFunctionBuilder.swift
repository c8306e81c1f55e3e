import CLLVM

typealias LLVMValue = LLVMValueRef

/// A small layer over LLVM's C IR builder for the kernels: index arithmetic that folds
/// constants, counted loops with phi nodes, branches, float loads and stores of scalars or
/// `<N x float>` vectors, and the activations.
///
/// Indices are pointer-sized integers (`i64` on 64-bit targets, `i32` on 32-bit ones) and
/// carry `nsw`: every tensor has fewer than 2^31 elements, which the C backend's graph check
/// enforces before any code is built. A float vector of width 1 is the scalar `float`.
final class LLVMFunctionBuilder {
    let context: LLVMContextRef
    let module: LLVMModuleRef
    let builder: LLVMBuilderRef
    let floatType: LLVMTypeRef
    let doubleType: LLVMTypeRef
    let int1Type: LLVMTypeRef
    let int8Type: LLVMTypeRef
    let int32Type: LLVMTypeRef
    let indexType: LLVMTypeRef
    let voidType: LLVMTypeRef
    let floatPointerType: LLVMTypeRef
    let bytePointerType: LLVMTypeRef
    private(set) var function: LLVMValue?
    private var intrinsics: [String: (LLVMTypeRef, LLVMValue)] = [:]

    init(context: LLVMContextRef, module: LLVMModuleRef) {
        self.context = context
        self.module = module
        builder = LLVMCreateBuilderInContext(context)
        floatType = LLVMFloatTypeInContext(context)
        doubleType = LLVMDoubleTypeInContext(context)
        int1Type = LLVMInt1TypeInContext(context)
        int8Type = LLVMInt8TypeInContext(context)
        int32Type = LLVMInt32TypeInContext(context)
        voidType = LLVMVoidTypeInContext(context)
        floatPointerType = LLVMPointerType(floatType, 0)
        bytePointerType = LLVMPointerType(int8Type, 0)
        if let layout = LLVMGetModuleDataLayout(module) {
            indexType = LLVMIntPtrTypeInContext(context, layout)
        } else {
            indexType = LLVMInt64TypeInContext(context)
        }
    }

    deinit {
        LLVMDisposeBuilder(builder)
    }

    // MARK: - Functions

    /// A pointer parameter and what the function does with the memory behind it. The
    /// attributes promise that the pointer is the only way the function reaches that memory
    /// (`noalias`), that it is not kept (`nocapture`), its alignment, and the bytes it may
    /// access (`dereferenceable`), so LLVM can vectorize and hoist loads without checks.
    struct Parameter {
        enum Role {
            case input(bytes: Int, alignment: Int)
            case output(bytes: Int, alignment: Int)
            /// A byte pointer without attributes (the exported entry point's arguments).
            case bytes
            /// A float pointer without attributes.
            case floats
        }

        var name: String
        var role: Role
    }

    /// Starts a function of float pointers (or byte pointers) and positions the builder in
    /// its entry block. Exported functions keep external linkage; the others are internal.
    @discardableResult
    func beginFunction(name: String, parameters: [Parameter], returnsInt: Bool = false, isExported: Bool = false,
                       cpu: String, features: String) -> LLVMValue {
        var types: [LLVMTypeRef?] = parameters.map { parameter in
            if case .bytes = parameter.role { return bytePointerType }
            return floatPointerType
        }
        let type = LLVMFunctionType(returnsInt ? int32Type : voidType, &types, UInt32(types.count), 0)
        let function = LLVMAddFunction(module, name, type)!
        if !isExported {
            // Kernels stay separate functions, as in the C backend: inlining them all into
            // NAME_run made no measurable difference at run time but doubled the code
            // generation time (mobilenet_v3_large, x86-64 with AVX-512: 9.1 s against 4.5 s).
            LLVMSetLinkage(function, LLVMInternalLinkage)
            addFunctionAttribute(function, "noinline")
        }
        addFunctionAttribute(function, "nounwind")
        if !cpu.isEmpty { addStringAttribute(function, "target-cpu", cpu) }
        if !features.isEmpty { addStringAttribute(function, "target-features", features) }
        for (index, parameter) in parameters.enumerated() {
            let value = LLVMGetParam(function, UInt32(index))!
            LLVMSetValueName2(value, parameter.name, parameter.name.utf8.count)
            let position = UInt32(index + 1)
            switch parameter.role {
            case .input(let bytes, let alignment), .output(let bytes, let alignment):
                addParameterAttribute(function, position, "noalias")
                addParameterAttribute(function, position, "nocapture")
                addParameterAttribute(function, position, "align", alignment)
                if bytes > 0 { addParameterAttribute(function, position, "dereferenceable", bytes) }
                if case .input = parameter.role { addParameterAttribute(function, position, "readonly") }
            case .bytes, .floats:
                break
            }
        }
        self.function = function
        let entry = LLVMAppendBasicBlockInContext(context, function, "entry")
        LLVMPositionBuilderAtEnd(builder, entry)
        return function
    }

    /// Defines a whole function with `body` and returns the builder to where it was, so
    /// kernels can be defined while another function is being built.
    func defineFunction(name: String, parameters: [Parameter], cpu: String, features: String,
                        body: () -> Void) -> LLVMValue {
        let savedFunction = function
        let savedBlock = LLVMGetInsertBlock(builder)
        let defined = beginFunction(name: name, parameters: parameters, cpu: cpu, features: features)
        body()
        finishFunction()
        function = savedFunction
        if let savedBlock { LLVMPositionBuilderAtEnd(builder, savedBlock) }
        return defined
    }

    /// Ends the current function with `ret void` unless its last block already returns.
    func finishFunction() {
        if let block = LLVMGetInsertBlock(builder), LLVMGetBasicBlockTerminator(block) == nil {
            LLVMBuildRetVoid(builder)
        }
        function = nil
    }

    func parameter(_ index: Int) -> LLVMValue {
        LLVMGetParam(function, UInt32(index))
    }

    func addFunctionAttribute(_ function: LLVMValue, _ name: String) {
        let kind = LLVMGetEnumAttributeKindForName(name, name.utf8.count)
        LLVMAddAttributeAtIndex(function, functionAttributeIndex, LLVMCreateEnumAttribute(context, kind, 0))
    }

    func addStringAttribute(_ function: LLVMValue, _ key: String, _ value: String) {
        let attribute = LLVMCreateStringAttribute(context, key, UInt32(key.utf8.count), value, UInt32(value.utf8.count))
        LLVMAddAttributeAtIndex(function, functionAttributeIndex, attribute)
    }

    func addParameterAttribute(_ function: LLVMValue, _ position: UInt32, _ name: String, _ value: Int = 0) {
        let kind = LLVMGetEnumAttributeKindForName(name, name.utf8.count)
        LLVMAddAttributeAtIndex(function, position, LLVMCreateEnumAttribute(context, kind, UInt64(value)))
    }

    /// Calls an internal kernel and returns nothing.
    func call(_ function: LLVMValue, _ arguments: [LLVMValue]) {
        var values: [LLVMValue?] = arguments
        let type = LLVMGlobalGetValueType(function)
        LLVMBuildCall2(builder, type, function, &values, UInt32(values.count), "")
    }

    // MARK: - Control flow

    func appendBlock(_ name: String) -> LLVMBasicBlockRef {
        LLVMAppendBasicBlockInContext(context, function, name)
    }

    /// Emits `for (i = start; i < end; i += step)` with the induction variable and the carried
    /// values as phi nodes. `body` receives the index and the carried values and returns
    /// their next values; the result is the carried values after the loop. Emits nothing and
    /// returns `carrying` when both bounds are constants and the loop runs zero times.
    @discardableResult
    func loop(from start: LLVMValue, to end: LLVMValue, step: Int = 1, carrying initial: [LLVMValue] = [],
              _ body: (LLVMValue, [LLVMValue]) -> [LLVMValue]) -> [LLVMValue] {
        if let first = constantValue(start), let last = constantValue(end), first >= last {
            return initial
        }
        let preheader = LLVMGetInsertBlock(builder)
        let header = appendBlock("loop")
        let bodyBlock = appendBlock("body")
        let exit = appendBlock("exit")
        LLVMBuildBr(builder, header)

        LLVMPositionBuilderAtEnd(builder, header)
        let index = LLVMBuildPhi(builder, indexType, "i")!
        let carried = initial.map { LLVMBuildPhi(builder, LLVMTypeOf($0), "carried")! }
        let condition = LLVMBuildICmp(builder, LLVMIntSLT, index, end, "")
        LLVMBuildCondBr(builder, condition, bodyBlock, exit)

        LLVMPositionBuilderAtEnd(builder, bodyBlock)
        let next = body(index, carried)
        let incremented = LLVMBuildNSWAdd(builder, index, self.index(step), "")
        let latch = LLVMGetInsertBlock(builder)
        LLVMBuildBr(builder, header)

        addIncoming(index, [(start, preheader), (incremented!, latch)])
        for (phi, (first, following)) in zip(carried, zip(initial, next)) {
            addIncoming(phi, [(first, preheader), (following, latch)])
        }
        LLVMPositionBuilderAtEnd(builder, exit)
        return carried
    }

    @discardableResult
    func loop(from start: Int = 0, to end: Int, step: Int = 1, carrying initial: [LLVMValue] = [],
              _ body: (LLVMValue, [LLVMValue]) -> [LLVMValue]) -> [LLVMValue] {
        loop(from: index(start), to: index(end), step: step, carrying: initial, body)
    }

    func loop(from start: Int = 0, to end: Int, step: Int = 1, _ body: (LLVMValue) -> Void) {
        loop(from: index(start), to: index(end), step: step, carrying: []) { i, _ in
            body(i)
            return []
        }
    }

    func loop(from start: LLVMValue, to end: LLVMValue, _ body: (LLVMValue) -> Void) {
        loop(from: start, to: end, carrying: []) { i, _ in
            body(i)
            return []
        }
    }

    private func addIncoming(_ phi: LLVMValue, _ pairs: [(LLVMValue, LLVMBasicBlockRef?)]) {
        var values: [LLVMValue?] = pairs.map(\.0)
        var blocks: [LLVMBasicBlockRef?] = pairs.map(\.1)
        LLVMAddIncoming(phi, &values, &blocks, UInt32(pairs.count))
    }

    /// Emits `if (condition) { then } else { otherwise }`, the else branch only when given.
    func ifThen(_ condition: LLVMValue, _ then: () -> Void, else otherwise: (() -> Void)? = nil) {
        let thenBlock = appendBlock("then")
        let elseBlock = otherwise == nil ? nil : appendBlock("else")
        let merge = appendBlock("merge")
        LLVMBuildCondBr(builder, condition, thenBlock, elseBlock ?? merge)
        LLVMPositionBuilderAtEnd(builder, thenBlock)
        then()
        LLVMBuildBr(builder, merge)
        if let elseBlock, let otherwise {
            LLVMPositionBuilderAtEnd(builder, elseBlock)
            otherwise()
            LLVMBuildBr(builder, merge)
        }
        LLVMPositionBuilderAtEnd(builder, merge)
    }

    // MARK: - Index arithmetic

    func index(_ value: Int) -> LLVMValue {
        LLVMConstInt(indexType, UInt64(bitPattern: Int64(value)), 1)
    }

    /// Returns the value of an integer constant, or nil for a value computed at run time.
    func constantValue(_ value: LLVMValue) -> Int? {
        guard LLVMIsAConstantInt(value) != nil else { return nil }
        return Int(LLVMConstIntGetSExtValue(value))
    }

    func add(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        if constantValue(a) == 0 { return b }
        if constantValue(b) == 0 { return a }
        return LLVMBuildNSWAdd(builder, a, b, "")
    }

    func add(_ a: LLVMValue, _ b: Int) -> LLVMValue {
        add(a, index(b))
    }

    func sum(_ terms: [LLVMValue]) -> LLVMValue {
        terms.reduce(index(0)) { add($0, $1) }
    }

    func sub(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        if constantValue(b) == 0 { return a }
        return LLVMBuildNSWSub(builder, a, b, "")
    }

    func mul(_ a: LLVMValue, _ k: Int) -> LLVMValue {
        if k == 1 { return a }
        if k == 0 { return index(0) }
        return LLVMBuildNSWMul(builder, a, index(k), "")
    }

    func mul(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        if let k = constantValue(b) { return mul(a, k) }
        if let k = constantValue(a) { return mul(b, k) }
        return LLVMBuildNSWMul(builder, a, b, "")
    }

    /// `a / k` for `a >= 0` and a constant `k > 0`.
    func divide(_ a: LLVMValue, _ k: Int) -> LLVMValue {
        if k == 1 { return a }
        if let value = constantValue(a) { return index(value / k) }
        return LLVMBuildUDiv(builder, a, index(k), "")
    }

    /// `a % k` for `a >= 0` and a constant `k > 0`.
    func remainder(_ a: LLVMValue, _ k: Int) -> LLVMValue {
        if k == 1 { return index(0) }
        if let value = constantValue(a) { return index(value % k) }
        return LLVMBuildURem(builder, a, index(k), "")
    }

    func negate(_ a: LLVMValue) -> LLVMValue {
        LLVMBuildNSWSub(builder, index(0), a, "")
    }

    func compare(_ predicate: LLVMIntPredicate, _ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildICmp(builder, predicate, a, b, "")
    }

    func and(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildAnd(builder, a, b, "")
    }

    func or(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildOr(builder, a, b, "")
    }

    func select(_ condition: LLVMValue, _ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildSelect(builder, condition, a, b, "")
    }

    func maximum(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        select(compare(LLVMIntSGT, a, b), a, b)
    }

    func minimum(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        select(compare(LLVMIntSLT, a, b), a, b)
    }

    // MARK: - Memory

    func vectorType(_ width: Int) -> LLVMTypeRef {
        width == 1 ? floatType : LLVMVectorType(floatType, UInt32(width))
    }

    /// Returns `&base[index]` for a float pointer.
    func element(_ base: LLVMValue, _ index: LLVMValue) -> LLVMValue {
        if constantValue(index) == 0 { return base }
        var indices: [LLVMValue?] = [index]
        return LLVMBuildInBoundsGEP2(builder, floatType, base, &indices, 1, "")
    }

    func element(_ base: LLVMValue, _ index: Int) -> LLVMValue {
        element(base, self.index(index))
    }

    /// Loads `width` consecutive floats from `base[index]`, 4-byte aligned.
    func load(_ base: LLVMValue, _ index: LLVMValue, width: Int = 1) -> LLVMValue {
        var pointer = element(base, index)
        if width > 1 {
            pointer = LLVMBuildBitCast(builder, pointer, LLVMPointerType(vectorType(width), 0), "")
        }
        let load = LLVMBuildLoad2(builder, vectorType(width), pointer, "")!
        LLVMSetAlignment(load, 4)
        return load
    }

    func store(_ value: LLVMValue, _ base: LLVMValue, _ index: LLVMValue) {
        let width = widthOf(value)
        var pointer = element(base, index)
        if width > 1 {
            pointer = LLVMBuildBitCast(builder, pointer, LLVMPointerType(vectorType(width), 0), "")
        }
        let store = LLVMBuildStore(builder, value, pointer)
        LLVMSetAlignment(store, 4)
    }

    /// Returns `base + offset bytes` as a float pointer.
    func bytePointer(_ base: LLVMValue, offset: Int) -> LLVMValue {
        var indices: [LLVMValue?] = [index(offset)]
        let pointer = offset == 0 ? base : LLVMBuildInBoundsGEP2(builder, int8Type, base, &indices, 1, "")!
        return LLVMBuildBitCast(builder, pointer, floatPointerType, "")
    }

    // MARK: - Floats

    func widthOf(_ value: LLVMValue) -> Int {
        let type = LLVMTypeOf(value)
        return LLVMGetTypeKind(type) == LLVMVectorTypeKind ? Int(LLVMGetVectorSize(type)) : 1
    }

    func float(_ value: Float, width: Int = 1) -> LLVMValue {
        let scalar = LLVMConstReal(floatType, Double(value))!
        guard width > 1 else { return scalar }
        var elements: [LLVMValue?] = Array(repeating: scalar, count: width)
        return LLVMConstVector(&elements, UInt32(width))
    }

    /// Broadcasts a scalar float into all lanes of a vector of `width` lanes.
    func splat(_ scalar: LLVMValue, width: Int) -> LLVMValue {
        guard width > 1 else { return scalar }
        let single = LLVMBuildInsertElement(builder, LLVMGetUndef(vectorType(width)), scalar, LLVMConstInt(int32Type, 0, 0), "")
        let mask = LLVMConstNull(LLVMVectorType(int32Type, UInt32(width)))
        return LLVMBuildShuffleVector(builder, single, LLVMGetUndef(vectorType(width)), mask, "")
    }

    func extract(_ vector: LLVMValue, lane: Int) -> LLVMValue {
        LLVMBuildExtractElement(builder, vector, LLVMConstInt(int32Type, UInt64(lane), 0), "")
    }

    func fadd(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildFAdd(builder, a, b, "")
    }

    func fsub(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildFSub(builder, a, b, "")
    }

    func fmul(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildFMul(builder, a, b, "")
    }

    func fdiv(_ a: LLVMValue, _ b: LLVMValue) -> LLVMValue {
        LLVMBuildFDiv(builder, a, b, "")
    }

    /// `a * b + c`, fused into one FMA where the target has it (`llvm.fmuladd`), as C compilers
    /// contract `acc += x * w` by default.
    func fmuladd(_ a: LLVMValue, _ b: LLVMValue, _ c: LLVMValue) -> LLVMValue {
        callIntrinsic("llvm.fmuladd", type: LLVMTypeOf(c), [a, b, c])
    }

    func callIntrinsic(_ name: String, type: LLVMTypeRef, _ arguments: [LLVMValue]) -> LLVMValue {
        let kind = LLVMGetTypeKind(type)
        let isVector = kind == LLVMVectorTypeKind
        let elementKind = isVector ? LLVMGetTypeKind(LLVMGetElementType(type)) : kind
        let key = "\(name).\(elementKind.rawValue).\(isVector ? Int(LLVMGetVectorSize(type)) : 1)"
        let (functionType, function): (LLVMTypeRef, LLVMValue)
        if let cached = intrinsics[key] {
            (functionType, function) = cached
        } else {
            let id = LLVMLookupIntrinsicID(name, name.utf8.count)
            var types: [LLVMTypeRef?] = [type]
            function = LLVMGetIntrinsicDeclaration(module, id, &types, 1)
            functionType = LLVMIntrinsicGetType(context, id, &types, 1)
            intrinsics[key] = (functionType, function)
        }
        var values: [LLVMValue?] = arguments
        return LLVMBuildCall2(builder, functionType, function, &values, UInt32(values.count), "")
    }

    /// `v < low ? low : v`, then `> high ? high : v`: the C helpers' clamp, lane by lane. A NaN
    /// fails both comparisons and passes through.
    func clamp(_ v: LLVMValue, _ low: Float, _ high: Float) -> LLVMValue {
        let width = widthOf(v)
        let lowValue = float(low, width: width), highValue = float(high, width: width)
        let raised = select(LLVMBuildFCmp(builder, LLVMRealOLT, v, lowValue, ""), lowValue, v)
        return select(LLVMBuildFCmp(builder, LLVMRealOGT, raised, highValue, ""), highValue, raised)
    }

    /// Applies an activation with the C helpers' formulas, to a scalar or a vector.
    func activate(_ v: LLVMValue, _ activation: Activation) -> LLVMValue {
        let width = widthOf(v)
        switch activation {
        case .identity:
            return v
        case .relu:
            let zero = float(0, width: width)
            return select(LLVMBuildFCmp(builder, LLVMRealOLT, v, zero, ""), zero, v)
        case .relu6:
            return clamp(v, 0, 6)
        case .hardswish:
            return fmul(v, fmul(clamp(fadd(v, float(3, width: width)), 0, 6), float(1.0 / 6.0, width: width)))
        case .hardsigmoid:
            return fmul(clamp(fadd(v, float(3, width: width)), 0, 6), float(1.0 / 6.0, width: width))
        case .hardsigmoidLinear:
            return clamp(fmuladd(float(0.2, width: width), v, float(0.5, width: width)), 0, 1)
        }
    }
}

/// `LLVMAttributeFunctionIndex` (`~0U`), which Swift imports as the signed value -1.
private let functionAttributeIndex = LLVMAttributeIndex.max
