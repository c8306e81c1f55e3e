import Foundation
import XCTest
@testable import MNC

// Builders for the tests of the TFLite and ONNX readers and of weight binding: FlatBuffers and
// protobuf files written byte by byte, graphs built from the IR types, and access to the shared
// reference data.

/// Returns the shared reference data folder, or throws a skip when it is absent.
func sharedDataDirectory(file: StaticString = #filePath) throws -> String {
    let root = URL(fileURLWithPath: "\(file)")
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let data = root.appendingPathComponent("../shared/data").standardizedFileURL.path
    guard FileManager.default.fileExists(atPath: data) else {
        throw XCTSkip("real model files are not available: ../shared/data not found")
    }
    return data
}

/// Asserts that `body` throws an `MNCError` whose message contains `expected`.
func assertMNCError<T>(_ body: @autoclosure () throws -> T, contains expected: String,
                       file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected an error containing '\(expected)', got no error", file: file, line: line)
    } catch let error as MNCError {
        XCTAssertTrue(error.message.contains(expected), "'\(error.message)' does not contain '\(expected)'",
                      file: file, line: line)
    } catch {
        XCTFail("expected an MNCError, got \(error)", file: file, line: line)
    }
}

/// Corrupts `bytes` in many deterministic ways (every truncation, and 1 to 4 random bytes
/// overwritten, seeded) and calls `body` on each variant.
func forEachCorruption(of bytes: [UInt8], mutations: Int, _ body: ([UInt8]) -> Void) {
    for length in 0..<bytes.count {
        body(Array(bytes.prefix(length)))
    }
    // A 64-bit linear congruential generator (Knuth's MMIX constants) keeps the run reproducible.
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next() -> Int {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Int(state >> 33)
    }
    for _ in 0..<mutations {
        var variant = bytes
        for _ in 0...(next() % 4) {
            variant[next() % variant.count] = UInt8(truncatingIfNeeded: next())
        }
        body(variant)
    }
}

/// Runs `body` and fails unless it returns or throws an `MNCError`.
func expectSuccessOrMNCError(_ what: String, file: StaticString = #filePath, line: UInt = #line,
                             _ body: () throws -> Void) {
    do {
        try body()
    } catch is MNCError {
    } catch {
        XCTFail("\(what): \(error) is not an MNCError", file: file, line: line)
    }
}

// MARK: - FlatBuffers

/// A FlatBuffers value to serialize: tables, vectors and strings are written out of line and
/// referenced by offset, scalars are written inline in their table.
indirect enum FlatValue {
    /// Fields by vtable id.
    case table([(Int, FlatValue)])
    case tables([FlatValue])
    case string(String)
    case bytes([UInt8])
    case int32s([Int32])
    case int64s([Int64])
    case floats([Float])
    case u8(UInt8)
    case i8(Int8)
    case i32(Int32)
    case u32(UInt32)
    case u64(UInt64)
    /// A vector whose declared element count can differ from the bytes that follow it.
    case rawVector(count: UInt32, bytes: [UInt8])
    /// An offset field holding this raw value instead of pointing at a written object.
    case rawOffset(UInt32)

    var inlineSize: Int {
        switch self {
        case .u8, .i8: return 1
        case .i32, .u32, .rawOffset: return 4
        case .u64: return 8
        default: return 4
        }
    }
}

/// Writes FlatBuffers front to back: a parent is written before its children, so every
/// unsigned offset points forward as the format requires, and vtables precede their tables.
struct FlatBufferWriter {
    var bytes: [UInt8] = []

    static func file(root: FlatValue, identifier: String = "TFL3") -> [UInt8] {
        var writer = FlatBufferWriter()
        writer.bytes = [0, 0, 0, 0] + Array(identifier.utf8)
        let position = writer.write(root)
        writer.patch(slot: 0, target: position)
        return writer.bytes
    }

    mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func align(_ alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }

    mutating func patch(slot: Int, target: Int) {
        let relative = UInt32(target - slot)
        for index in 0..<4 {
            bytes[slot + index] = UInt8(truncatingIfNeeded: relative >> (8 * index))
        }
    }

    /// Writes an out-of-line value and returns its position.
    mutating func write(_ value: FlatValue) -> Int {
        switch value {
        case .table(let fields):
            return writeTable(fields)
        case .tables(let elements):
            align(4)
            let start = bytes.count
            append(UInt32(elements.count))
            let slots = elements.indices.map { start + 4 + 4 * $0 }
            for _ in elements { append(UInt32(0)) }
            for (slot, element) in zip(slots, elements) {
                let position = write(element)
                patch(slot: slot, target: position)
            }
            return start
        case .string(let text):
            align(4)
            let start = bytes.count
            append(UInt32(text.utf8.count))
            bytes += Array(text.utf8) + [0]
            return start
        case .bytes(let data):
            return writeVector(count: data.count, data)
        case .int32s(let values):
            return writeVector(count: values.count, values.flatMap { littleEndianBytes($0) })
        case .int64s(let values):
            return writeVector(count: values.count, values.flatMap { littleEndianBytes($0) })
        case .floats(let values):
            return writeVector(count: values.count, values.flatMap { littleEndianBytes($0.bitPattern) })
        case .rawVector(let count, let data):
            return writeVector(count: Int(count), data)
        default:
            preconditionFailure("scalars are written inline")
        }
    }

    mutating func writeVector(count: Int, _ data: [UInt8]) -> Int {
        align(4)
        let start = bytes.count
        append(UInt32(count))
        bytes += data
        return start
    }

    mutating func writeTable(_ fields: [(Int, FlatValue)]) -> Int {
        let fieldCount = (fields.map(\.0).max() ?? -1) + 1
        // Inline layout: the vtable offset, then each field at its own offset.
        var fieldOffsets = [Int](repeating: 0, count: fieldCount)
        var objectSize = 4
        for (id, value) in fields {
            fieldOffsets[id] = objectSize
            objectSize += value.inlineSize
        }

        align(4)
        let vtable = bytes.count
        append(UInt16(4 + 2 * fieldCount))
        append(UInt16(objectSize))
        for offset in fieldOffsets { append(UInt16(offset)) }

        align(4)
        let table = bytes.count
        append(Int32(table - vtable))
        var children: [(slot: Int, value: FlatValue)] = []
        for (_, value) in fields {
            switch value {
            case .u8(let scalar): append(scalar)
            case .i8(let scalar): append(scalar)
            case .i32(let scalar): append(scalar)
            case .u32(let scalar): append(scalar)
            case .u64(let scalar): append(scalar)
            case .rawOffset(let raw): append(raw)
            default:
                children.append((bytes.count, value))
                append(UInt32(0))
            }
        }

        // Children follow the table, so their offsets are positive.
        for child in children {
            let position = write(child.value)
            patch(slot: child.slot, target: position)
        }
        return table
    }
}

func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

/// A tensor of a hand-built TFLite model.
struct TFLiteTensorSpec {
    var name: String
    /// `TensorType` code: 0 FLOAT32, 1 FLOAT16, 2 INT32, 3 UINT8, 5 STRING, 9 INT8.
    var type: Int8
    var shape: [Int32]
    var data: [UInt8] = []
    var scale: [Float]? = nil
    var zeroPoint: [Int64]? = nil
    var quantizedDimension: Int32 = 0
}

/// An operator of a hand-built TFLite model; `options` is the `builtin_options` table.
struct TFLiteOperatorSpec {
    var builtinCode: Int
    var inputs: [Int32]
    var outputs: [Int32]
    var optionsType: UInt8 = 0
    var options: FlatValue? = nil
}

/// Returns the `Model` table of a TFLite file with one subgraph. Tensors with data get buffers 1, 2, ... in order.
func tfliteModelValue(tensors: [TFLiteTensorSpec], operators: [TFLiteOperatorSpec],
                      inputs: [Int32] = [0], outputs: [Int32]? = nil) -> FlatValue {
    var codes: [Int] = []
    for op in operators where !codes.contains(op.builtinCode) {
        codes.append(op.builtinCode)
    }
    let operatorCodes = FlatValue.tables(codes.map { code in
        .table([(0, .i8(Int8(min(code, 127)))), (2, .i32(1)), (3, .i32(Int32(code)))])
    })
    var buffers: [FlatValue] = [.table([])]
    var tensorTables: [FlatValue] = []
    for tensor in tensors {
        var fields: [(Int, FlatValue)] = [(0, .int32s(tensor.shape)), (1, .i8(tensor.type))]
        if !tensor.data.isEmpty {
            fields.append((2, .u32(UInt32(buffers.count))))
            buffers.append(.table([(0, .bytes(tensor.data))]))
        } else {
            fields.append((2, .u32(0)))
        }
        fields.append((3, .string(tensor.name)))
        if let scale = tensor.scale {
            fields.append((4, .table([(2, .floats(scale)), (3, .int64s(tensor.zeroPoint ?? [])),
                                      (6, .i32(tensor.quantizedDimension))])))
        }
        tensorTables.append(.table(fields))
    }
    let operatorTables = FlatValue.tables(operators.map { op in
        var fields: [(Int, FlatValue)] = [(0, .u32(UInt32(codes.firstIndex(of: op.builtinCode) ?? 0))),
                                          (1, .int32s(op.inputs)), (2, .int32s(op.outputs))]
        if let options = op.options {
            fields.append((3, .u8(op.optionsType)))
            fields.append((4, options))
        }
        return .table(fields)
    })
    let subgraph = FlatValue.table([
        (0, .tables(tensorTables)), (1, .int32s(inputs)),
        (2, .int32s(outputs ?? [Int32(tensors.count - 1)])), (3, operatorTables), (4, .string("main")),
    ])
    return .table([(0, .u32(3)), (1, operatorCodes), (2, .tables([subgraph])), (3, .string("hand-built")),
                   (4, .tables(buffers))])
}

/// `Conv2DOptions`: padding 0 SAME / 1 VALID, activation 0 NONE / 1 RELU / 3 RELU6.
func conv2DOptions(padding: Int8 = 0, stride: Int32 = 1, activation: Int8 = 3, dilation: Int32 = 1) -> FlatValue {
    .table([(0, .i8(padding)), (1, .i32(stride)), (2, .i32(stride)), (3, .i8(activation)),
            (4, .i32(dilation)), (5, .i32(dilation))])
}

func depthwiseOptions(padding: Int8 = 0, stride: Int32 = 1, multiplier: Int32 = 1, activation: Int8 = 3) -> FlatValue {
    .table([(0, .i8(padding)), (1, .i32(stride)), (2, .i32(stride)), (3, .i32(multiplier)), (4, .i8(activation))])
}

func fullyConnectedOptions(activation: Int8 = 0) -> FlatValue {
    .table([(0, .i8(activation))])
}

func uint8Bytes(_ values: [Int]) -> [UInt8] { values.map { UInt8($0) } }

func int32Bytes(_ values: [Int32]) -> [UInt8] { values.flatMap { littleEndianBytes($0) } }

func float32Bytes(_ values: [Float]) -> [UInt8] { values.flatMap { littleEndianBytes($0.bitPattern) } }

/// Returns a TFLite file: conv 3×3 stride 2 (2 → 3 channels, 4×4 input) → depthwise 3×3 → average
/// pool → fully connected (3 → 2). The convolution weights count up from 0 in the file's order,
/// so a transposition shows.
func tinyTFLiteBytes(convBias: Bool = true) -> [UInt8] {
    let convWeights = (0..<54).map { Float($0) }
    let depthwiseWeights = (0..<27).map { Float(100 + $0) }
    var convInputs: [Int32] = [0, 1, 2]
    if !convBias { convInputs[2] = -1 }
    let tensors = [
        TFLiteTensorSpec(name: "input", type: 0, shape: [1, 4, 4, 2]),
        TFLiteTensorSpec(name: "conv/w", type: 0, shape: [3, 3, 3, 2], data: float32Bytes(convWeights)),
        TFLiteTensorSpec(name: "conv/b", type: 0, shape: [3], data: float32Bytes([0.5, -0.5, 1])),
        TFLiteTensorSpec(name: "conv/out", type: 0, shape: [1, 2, 2, 3]),
        TFLiteTensorSpec(name: "dw/w", type: 0, shape: [1, 3, 3, 3], data: float32Bytes(depthwiseWeights)),
        TFLiteTensorSpec(name: "dw/b", type: 0, shape: [3], data: float32Bytes([1, 2, 3])),
        TFLiteTensorSpec(name: "dw/out", type: 0, shape: [1, 2, 2, 3]),
        TFLiteTensorSpec(name: "pool", type: 0, shape: [1, 1, 1, 3]),
        TFLiteTensorSpec(name: "fc/w", type: 3, shape: [2, 3], data: uint8Bytes([10, 12, 14, 9, 8, 7]),
                         scale: [0.5], zeroPoint: [10]),
        TFLiteTensorSpec(name: "fc/b", type: 2, shape: [2], data: int32Bytes([4, -8]), scale: [0.25], zeroPoint: [0]),
        TFLiteTensorSpec(name: "logits", type: 0, shape: [1, 2]),
    ]
    let ops = [
        TFLiteOperatorSpec(builtinCode: 3, inputs: convInputs, outputs: [3], optionsType: 1,
                           options: conv2DOptions(stride: 2)),
        TFLiteOperatorSpec(builtinCode: 4, inputs: [3, 4, 5], outputs: [6], optionsType: 2,
                           options: depthwiseOptions()),
        TFLiteOperatorSpec(builtinCode: 1, inputs: [6], outputs: [7], optionsType: 5,
                           options: .table([(0, .i8(1)), (1, .i32(1)), (2, .i32(1)), (3, .i32(2)), (4, .i32(2))])),
        TFLiteOperatorSpec(builtinCode: 9, inputs: [7, 8, 9], outputs: [10], optionsType: 8,
                           options: fullyConnectedOptions()),
    ]
    return FlatBufferWriter.file(root: tfliteModelValue(tensors: tensors, operators: ops))
}

// MARK: - Protobuf

/// Writes protobuf wire format field by field.
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(rest & 0x7F) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    mutating func key(_ field: Int, _ wireType: Int) {
        varint(UInt64(field << 3 | wireType))
    }

    mutating func int(_ field: Int, _ value: Int64) {
        key(field, 0)
        varint(UInt64(bitPattern: value))
    }

    mutating func data(_ field: Int, _ value: [UInt8]) {
        key(field, 2)
        varint(UInt64(value.count))
        bytes += value
    }

    mutating func string(_ field: Int, _ value: String) {
        data(field, Array(value.utf8))
    }

    mutating func message(_ field: Int, _ value: ProtoWriter) {
        data(field, value.bytes)
    }

    mutating func float(_ field: Int, _ value: Float) {
        key(field, 5)
        bytes += littleEndianBytes(value.bitPattern)
    }

    mutating func packedInts(_ field: Int, _ values: [Int64]) {
        var payload = ProtoWriter()
        for value in values { payload.varint(UInt64(bitPattern: value)) }
        data(field, payload.bytes)
    }

    mutating func packedFloats(_ field: Int, _ values: [Float]) {
        data(field, float32Bytes(values))
    }
}

/// Returns a `TensorProto` with FLOAT data in `raw_data`.
func onnxTensor(_ name: String, dims: [Int64], floats: [Float]) -> ProtoWriter {
    var tensor = ProtoWriter()
    tensor.packedInts(1, dims)
    tensor.int(2, 1)
    tensor.string(8, name)
    tensor.data(9, float32Bytes(floats))
    return tensor
}

/// Returns an `AttributeProto` of type INTS (7), INT (2), FLOAT (1) or STRING (3).
func onnxAttribute(_ name: String, ints: [Int64]) -> ProtoWriter {
    var attribute = ProtoWriter()
    attribute.string(1, name)
    attribute.packedInts(8, ints)
    attribute.int(20, 7)
    return attribute
}

func onnxAttribute(_ name: String, int: Int64) -> ProtoWriter {
    var attribute = ProtoWriter()
    attribute.string(1, name)
    attribute.int(3, int)
    attribute.int(20, 2)
    return attribute
}

func onnxAttribute(_ name: String, float: Float) -> ProtoWriter {
    var attribute = ProtoWriter()
    attribute.string(1, name)
    attribute.float(2, float)
    attribute.int(20, 1)
    return attribute
}

func onnxAttribute(_ name: String, string: String) -> ProtoWriter {
    var attribute = ProtoWriter()
    attribute.string(1, name)
    attribute.string(4, string)
    attribute.int(20, 3)
    return attribute
}

func onnxNode(_ opType: String, _ inputs: [String], _ outputs: [String], name: String = "",
              attributes: [ProtoWriter] = []) -> ProtoWriter {
    var node = ProtoWriter()
    for input in inputs { node.string(1, input) }
    for output in outputs { node.string(2, output) }
    node.string(3, name)
    node.string(4, opType)
    for attribute in attributes { node.message(5, attribute) }
    return node
}

/// Returns a `ValueInfoProto` of a FLOAT tensor with fixed dimensions.
func onnxValueInfo(_ name: String, dims: [Int64]) -> ProtoWriter {
    var shape = ProtoWriter()
    for size in dims {
        var dimension = ProtoWriter()
        dimension.int(1, size)
        shape.message(1, dimension)
    }
    var tensorType = ProtoWriter()
    tensorType.int(1, 1)
    tensorType.message(2, shape)
    var type = ProtoWriter()
    type.message(1, tensorType)
    var info = ProtoWriter()
    info.string(1, name)
    info.message(2, type)
    return info
}

/// Returns a `ModelProto` (IR version 8, opset 17) around a graph of these parts.
func onnxModelBytes(nodes: [ProtoWriter], initializers: [ProtoWriter], inputs: [ProtoWriter],
                    outputs: [ProtoWriter]) -> [UInt8] {
    var graph = ProtoWriter()
    for node in nodes { graph.message(1, node) }
    graph.string(2, "test")
    for initializer in initializers { graph.message(5, initializer) }
    for input in inputs { graph.message(11, input) }
    for output in outputs { graph.message(12, output) }
    var opset = ProtoWriter()
    opset.string(1, "")
    opset.int(2, 17)
    var model = ProtoWriter()
    model.int(1, 8)
    model.string(2, "hand-built")
    model.message(7, graph)
    model.message(8, opset)
    return model.bytes
}

/// Returns an ONNX file: Conv (folded, with bias) → HardSwish → SE (GlobalAveragePool → Conv → Relu →
/// Conv → HardSigmoid → Mul) → Conv (folded) → GlobalAveragePool → Flatten → MatMul → Add.
func squeezeExciteONNXBytes() -> [UInt8] {
    onnxModelBytes(
        nodes: [
            onnxNode("Conv", ["x", "w0", "b0"], ["c0"]),
            onnxNode("HardSwish", ["c0"], ["a0"]),
            onnxNode("GlobalAveragePool", ["a0"], ["s0"]),
            onnxNode("Conv", ["s0", "fc1w", "fc1b"], ["s1"], name: "fc1"),
            onnxNode("Relu", ["s1"], ["s2"]),
            onnxNode("Conv", ["s2", "fc2w", "fc2b"], ["s3"], name: "fc2"),
            onnxNode("HardSigmoid", ["s3"], ["s4"], attributes: [onnxAttribute("alpha", float: 1.0 / 6.0)]),
            onnxNode("Mul", ["s4", "a0"], ["se"]),
            onnxNode("Conv", ["se", "w1", "b1"], ["c1"], name: "project"),
            onnxNode("GlobalAveragePool", ["c1"], ["p"]),
            onnxNode("Flatten", ["p"], ["f"]),
            onnxNode("MatMul", ["f", "mw"], ["mm"]),
            onnxNode("Add", ["mm", "mb"], ["y"]),
        ],
        initializers: [
            onnxTensor("w0", dims: [4, 2, 1, 1], floats: (0..<8).map { Float($0) }),
            onnxTensor("b0", dims: [4], floats: [1, 2, 3, 4]),
            onnxTensor("fc1w", dims: [2, 4, 1, 1], floats: (0..<8).map { Float(10 + $0) }),
            onnxTensor("fc1b", dims: [2], floats: [-1, -2]),
            onnxTensor("fc2w", dims: [4, 2, 1, 1], floats: (0..<8).map { Float(20 + $0) }),
            onnxTensor("fc2b", dims: [4], floats: [5, 6, 7, 8]),
            onnxTensor("w1", dims: [3, 4, 1, 1], floats: (0..<12).map { Float(30 + $0) }),
            onnxTensor("b1", dims: [3], floats: [0, 0, 1]),
            onnxTensor("mw", dims: [3, 2], floats: [1, 2, 3, 4, 5, 6]),
            onnxTensor("mb", dims: [2], floats: [0.5, -0.5]),
        ],
        inputs: [onnxValueInfo("x", dims: [1, 2, 2, 2])], outputs: [onnxValueInfo("y", dims: [1, 2])])
}

// MARK: - Graphs

/// Builds graphs node by node with torchvision-style parameter keys (`NAME.weight`).
struct GraphBuilder {
    var nodes: [Node] = []

    mutating func add(_ op: Op, _ inputs: [Int], shape: [Int], parameters: [Parameter] = [],
                      name: String, layer: String) -> Int {
        nodes.append(Node(op: op, inputs: inputs, shape: shape, parameters: parameters, name: name, layer: layer))
        return nodes.count - 1
    }

    mutating func input(channels: Int, height: Int, width: Int) -> Int {
        add(.input, [], shape: [1, channels, height, width], name: "input", layer: "input")
    }

    mutating func conv(_ x: Int, out: Int, kernel: Int, stride: Int = 1, padding: Padding, groups: Int = 1,
                       bias: Bool = false, name: String, layer: String) -> Int {
        let input = nodes[x].shape
        let conv = Conv2D(inChannels: input[1], outChannels: out, kernelHeight: kernel, kernelWidth: kernel,
                          strideHeight: stride, strideWidth: stride, padding: padding, groups: groups, hasBias: bias)
        let height = (input[2] + padding.top + padding.bottom - kernel) / stride + 1
        let width = (input[3] + padding.left + padding.right - kernel) / stride + 1
        var parameters = [Parameter(role: "weight", key: "\(name).weight", shape: conv.weightShape)]
        if bias {
            parameters.append(Parameter(role: "bias", key: "\(name).bias", shape: [out]))
        }
        return add(.conv2d(conv), [x], shape: [1, out, height, width], parameters: parameters, name: name, layer: layer)
    }

    mutating func batchNorm(_ x: Int, name: String, layer: String, epsilon: Float = 1e-5) -> Int {
        let channels = nodes[x].shape[1]
        let parameters = [
            Parameter(role: "weight", key: "\(name).weight", shape: [channels]),
            Parameter(role: "bias", key: "\(name).bias", shape: [channels]),
            Parameter(role: "running_mean", key: "\(name).running_mean", shape: [channels], trainable: false),
            Parameter(role: "running_var", key: "\(name).running_var", shape: [channels], trainable: false),
        ]
        return add(.batchNorm(epsilon: epsilon), [x], shape: nodes[x].shape, parameters: parameters, name: name,
                   layer: layer)
    }

    mutating func activation(_ x: Int, _ kind: Activation, name: String, layer: String) -> Int {
        add(.activation(kind), [x], shape: nodes[x].shape, name: name, layer: layer)
    }

    mutating func sum(_ a: Int, _ b: Int, name: String, layer: String) -> Int {
        add(.add, [a, b], shape: nodes[a].shape, name: name, layer: layer)
    }

    mutating func globalAveragePool(_ x: Int, name: String, layer: String) -> Int {
        add(.globalAveragePool, [x], shape: [1, nodes[x].shape[1], 1, 1], name: name, layer: layer)
    }

    mutating func flatten(_ x: Int, name: String, layer: String) -> Int {
        add(.flatten, [x], shape: [1, nodes[x].shape[1]], name: name, layer: layer)
    }

    mutating func dropout(_ x: Int, probability: Float, name: String, layer: String) -> Int {
        add(.dropout(probability: probability), [x], shape: nodes[x].shape, name: name, layer: layer)
    }

    mutating func linear(_ x: Int, out: Int, bias: Bool = true, name: String, layer: String) -> Int {
        let features = nodes[x].shape[1]
        var parameters = [Parameter(role: "weight", key: "\(name).weight", shape: [out, features])]
        if bias {
            parameters.append(Parameter(role: "bias", key: "\(name).bias", shape: [out]))
        }
        return add(.linear(Linear(inFeatures: features, outFeatures: out, hasBias: bias)), [x], shape: [1, out],
                   parameters: parameters, name: name, layer: layer)
    }

    mutating func squeezeExcite(_ x: Int, squeeze: Int, activation: Activation, gate: Activation, name: String,
                                layer: String) -> Int {
        let channels = nodes[x].shape[1]
        let block = SqueezeExcite(channels: channels, squeezeChannels: squeeze, activation: activation, gate: gate)
        let parameters = [
            Parameter(role: "fc1.weight", key: "\(name).fc1.weight", shape: [squeeze, channels, 1, 1]),
            Parameter(role: "fc1.bias", key: "\(name).fc1.bias", shape: [squeeze]),
            Parameter(role: "fc2.weight", key: "\(name).fc2.weight", shape: [channels, squeeze, 1, 1]),
            Parameter(role: "fc2.bias", key: "\(name).fc2.bias", shape: [channels]),
        ]
        return add(.squeezeExcite(block), [x], shape: nodes[x].shape, parameters: parameters, name: name, layer: layer)
    }

    /// A convolution followed by BatchNorm and, unless `activation` is identity, an activation.
    mutating func convBN(_ x: Int, out: Int, kernel: Int, stride: Int = 1, padding: Padding, groups: Int = 1,
                         activation: Activation, convName: String, bnName: String, layer: String) -> Int {
        var value = conv(x, out: out, kernel: kernel, stride: stride, padding: padding, groups: groups,
                         name: convName, layer: layer)
        value = batchNorm(value, name: bnName, layer: layer)
        if activation != .identity {
            value = self.activation(value, activation, name: "\(bnName).act", layer: layer)
        }
        return value
    }

    func graph(name: String) -> Graph {
        Graph(name: name, nodes: nodes, output: nodes.count - 1, preprocessing: Preprocessing())
    }
}

/// TensorFlow `SAME` padding for a square `size`: total `max((ceil(size / s) - 1) * s + k - size, 0)`,
/// the smaller half before.
func tensorFlowSamePadding(size: Int, kernel: Int, stride: Int) -> Padding {
    let outputs = (size + stride - 1) / stride
    let total = max((outputs - 1) * stride + kernel - size, 0)
    return Padding(top: total / 2, left: total / 2, bottom: total - total / 2, right: total - total / 2)
}

/// Builds the TF-slim MobileNetV1 (`mobilenet_v1.py`): channels `max(floor(c × alpha), 8)`, SAME
/// padding, BatchNorm and ReLU6 after every convolution, and a 1×1 convolution with bias to the
/// logits after global average pooling.
func tfSlimMobileNetV1(alpha: Double, resolution: Int, classes: Int = 1001) -> Graph {
    func channels(_ base: Int) -> Int { max(Int((Double(base) * alpha).rounded(.down)), 8) }
    var builder = GraphBuilder()
    var x = builder.input(channels: 3, height: resolution, width: resolution)
    x = builder.convBN(x, out: channels(32), kernel: 3, stride: 2,
                       padding: tensorFlowSamePadding(size: resolution, kernel: 3, stride: 2), activation: .relu6,
                       convName: "Conv2d_0.conv", bnName: "Conv2d_0.bn", layer: "Conv2d_0")
    let rows = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
    for (index, (base, stride)) in rows.enumerated() {
        let layer = "Conv2d_\(index + 1)"
        let size = builder.nodes[x].shape[2]
        let inputChannels = builder.nodes[x].shape[1]
        x = builder.convBN(x, out: inputChannels, kernel: 3, stride: stride,
                           padding: tensorFlowSamePadding(size: size, kernel: 3, stride: stride),
                           groups: inputChannels, activation: .relu6, convName: "\(layer)_depthwise.conv",
                           bnName: "\(layer)_depthwise.bn", layer: "\(layer)_depthwise")
        x = builder.convBN(x, out: channels(base), kernel: 1, padding: Padding(top: 0, left: 0, bottom: 0, right: 0),
                           activation: .relu6, convName: "\(layer)_pointwise.conv", bnName: "\(layer)_pointwise.bn",
                           layer: "\(layer)_pointwise")
    }
    x = builder.globalAveragePool(x, name: "Logits.avgpool", layer: "Logits")
    x = builder.conv(x, out: classes, kernel: 1, padding: Padding(top: 0, left: 0, bottom: 0, right: 0), bias: true,
                     name: "Logits.conv", layer: "Logits")
    _ = builder.flatten(x, name: "Logits.flatten", layer: "Logits")
    return builder.graph(name: "mobilenet_v1")
}

/// Builds torchvision's `mobilenet_v2(width_mult:, num_classes:)` with its `state_dict` keys.
func torchvisionMobileNetV2(width: Double, resolution: Int, classes: Int) -> Graph {
    // torchvision's `_make_divisible(v, 8)`: round to a multiple of 8, never more than 10% down.
    func divisible(_ value: Double) -> Int {
        var result = max(8, Int(value + 4) / 8 * 8)
        if Double(result) < 0.9 * value { result += 8 }
        return result
    }
    let one = Padding(top: 1, left: 1, bottom: 1, right: 1)
    let zero = Padding(top: 0, left: 0, bottom: 0, right: 0)
    var builder = GraphBuilder()
    var x = builder.input(channels: 3, height: resolution, width: resolution)
    x = builder.convBN(x, out: divisible(32 * width), kernel: 3, stride: 2, padding: one, activation: .relu6,
                       convName: "features.0.0", bnName: "features.0.1", layer: "features.0")
    let settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]
    var block = 1
    for (expansion, base, repeats, firstStride) in settings {
        let output = divisible(Double(base) * width)
        for repeatIndex in 0..<repeats {
            let stride = repeatIndex == 0 ? firstStride : 1
            let input = builder.nodes[x].shape[1]
            let hidden = Int((Double(input) * Double(expansion)).rounded())
            let prefix = "features.\(block).conv"
            let layer = "features.\(block)"
            var y = x
            var part = 0
            if expansion != 1 {
                y = builder.convBN(y, out: hidden, kernel: 1, padding: zero, activation: .relu6,
                                   convName: "\(prefix).0.0", bnName: "\(prefix).0.1", layer: layer)
                part = 1
            }
            y = builder.convBN(y, out: hidden, kernel: 3, stride: stride, padding: one, groups: hidden,
                               activation: .relu6, convName: "\(prefix).\(part).0", bnName: "\(prefix).\(part).1",
                               layer: layer)
            y = builder.convBN(y, out: output, kernel: 1, padding: zero, activation: .identity,
                               convName: "\(prefix).\(part + 1)", bnName: "\(prefix).\(part + 2)", layer: layer)
            if stride == 1 && input == output {
                y = builder.sum(x, y, name: "\(layer).add", layer: layer)
            }
            x = y
            block += 1
        }
    }
    x = builder.convBN(x, out: divisible(1280 * max(1.0, width)), kernel: 1, padding: zero, activation: .relu6,
                       convName: "features.\(block).0", bnName: "features.\(block).1", layer: "features.\(block)")
    x = builder.globalAveragePool(x, name: "avgpool", layer: "classifier")
    x = builder.flatten(x, name: "flatten", layer: "classifier")
    x = builder.dropout(x, probability: 0.2, name: "classifier.0", layer: "classifier")
    _ = builder.linear(x, out: classes, name: "classifier.1", layer: "classifier")
    return builder.graph(name: "mobilenet_v2")
}

/// Builds torchvision's `mobilenet_v3_large` or `mobilenet_v3_small` (width 1.0) with its `state_dict` keys.
func torchvisionMobileNetV3(large: Bool, resolution: Int, classes: Int) -> Graph {
    // (kernel, expanded channels, output channels, squeeze-excitation, hardswish, stride)
    let blocks: [(Int, Int, Int, Bool, Bool, Int)] = large ? [
        (3, 16, 16, false, false, 1), (3, 64, 24, false, false, 2), (3, 72, 24, false, false, 1),
        (5, 72, 40, true, false, 2), (5, 120, 40, true, false, 1), (5, 120, 40, true, false, 1),
        (3, 240, 80, false, true, 2), (3, 200, 80, false, true, 1), (3, 184, 80, false, true, 1),
        (3, 184, 80, false, true, 1), (3, 480, 112, true, true, 1), (3, 672, 112, true, true, 1),
        (5, 672, 160, true, true, 2), (5, 960, 160, true, true, 1), (5, 960, 160, true, true, 1),
    ] : [
        (3, 16, 16, true, false, 2), (3, 72, 24, false, false, 2), (3, 88, 24, false, false, 1),
        (5, 96, 40, true, true, 2), (5, 240, 40, true, true, 1), (5, 240, 40, true, true, 1),
        (5, 120, 48, true, true, 1), (5, 144, 48, true, true, 1), (5, 288, 96, true, true, 2),
        (5, 576, 96, true, true, 1), (5, 576, 96, true, true, 1),
    ]
    func divisible(_ value: Int) -> Int {
        var result = max(8, (value + 4) / 8 * 8)
        if Double(result) < 0.9 * Double(value) { result += 8 }
        return result
    }
    func pad(_ size: Int) -> Padding { Padding(top: size, left: size, bottom: size, right: size) }
    var builder = GraphBuilder()
    var x = builder.input(channels: 3, height: resolution, width: resolution)
    x = builder.convBN(x, out: 16, kernel: 3, stride: 2, padding: pad(1), activation: .hardswish,
                       convName: "features.0.0", bnName: "features.0.1", layer: "features.0")
    for (index, (kernel, expanded, output, useSE, hardswish, stride)) in blocks.enumerated() {
        let layer = "features.\(index + 1)"
        let activation: Activation = hardswish ? .hardswish : .relu
        let input = builder.nodes[x].shape[1]
        var y = x
        var part = 0
        if expanded != input {
            y = builder.convBN(y, out: expanded, kernel: 1, padding: pad(0), activation: activation,
                               convName: "\(layer).block.0.0", bnName: "\(layer).block.0.1", layer: layer)
            part += 1
        }
        y = builder.convBN(y, out: expanded, kernel: kernel, stride: stride, padding: pad((kernel - 1) / 2),
                           groups: expanded, activation: activation, convName: "\(layer).block.\(part).0",
                           bnName: "\(layer).block.\(part).1", layer: layer)
        part += 1
        if useSE {
            y = builder.squeezeExcite(y, squeeze: divisible(expanded / 4), activation: .relu, gate: .hardsigmoid,
                                      name: "\(layer).block.\(part)", layer: layer)
            part += 1
        }
        y = builder.convBN(y, out: output, kernel: 1, padding: pad(0), activation: .identity,
                           convName: "\(layer).block.\(part).0", bnName: "\(layer).block.\(part).1", layer: layer)
        if stride == 1 && input == output {
            y = builder.sum(y, x, name: "\(layer).add", layer: layer)
        }
        x = y
    }
    let last = "features.\(blocks.count + 1)"
    x = builder.convBN(x, out: 6 * builder.nodes[x].shape[1], kernel: 1, padding: pad(0), activation: .hardswish,
                       convName: "\(last).0", bnName: "\(last).1", layer: last)
    x = builder.globalAveragePool(x, name: "avgpool", layer: "classifier")
    x = builder.flatten(x, name: "flatten", layer: "classifier")
    x = builder.linear(x, out: large ? 1280 : 1024, name: "classifier.0", layer: "classifier")
    x = builder.activation(x, .hardswish, name: "classifier.1", layer: "classifier")
    x = builder.dropout(x, probability: 0.2, name: "classifier.2", layer: "classifier")
    _ = builder.linear(x, out: classes, name: "classifier.3", layer: "classifier")
    return builder.graph(name: large ? "mobilenet_v3_large" : "mobilenet_v3_small")
}

// MARK: - safetensors

/// Reads one float32 tensor of a safetensors file: an 8-byte little-endian header length, a
/// JSON header mapping names to `dtype`, `shape` and `data_offsets`, then the data.
func readSafetensor(path: String, name: String) throws -> (shape: [Int], data: [Float]) {
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    let headerLength = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any]
    let entry = try XCTUnwrap(header?[name] as? [String: Any], "\(name) not in \(path)")
    XCTAssertEqual(entry["dtype"] as? String, "F32")
    let shape = try XCTUnwrap(entry["shape"] as? [Int])
    let offsets = try XCTUnwrap(entry["data_offsets"] as? [Int])
    let start = 8 + headerLength + offsets[0]
    let data = decodeNumbers(bytes[start..<(8 + headerLength + offsets[1])], as: .float32,
                             count: (offsets[1] - offsets[0]) / 4).map { Float($0) }
    return (shape, data)
}
