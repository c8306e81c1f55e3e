import Foundation

/// The first subgraph of a TensorFlow Lite flatbuffer (`.tflite`, file identifier `TFL3`).
///
/// Field ids and enum values follow `tensorflow/lite/schema/schema.fbs` (schema version 3).
/// Tensor data stays in the file bytes until `values(ofTensor:)` converts it to float32.
public struct TFLiteModel {
    public var path: String
    /// The schema version stored in the file (3 for current files).
    public var version: Int
    public var description: String
    public var subgraphCount: Int
    public var tensors: [Tensor]
    /// Operators in execution order.
    public var operators: [Operator]
    /// Indices into `tensors` of the subgraph's inputs and outputs.
    public var inputs: [Int]
    public var outputs: [Int]
    /// The whole file; tensor data ranges index into it.
    let bytes: [UInt8]

    public struct Quantization: Equatable {
        /// One scale per tensor, or one per slice along `quantizedDimension`.
        public var scale: [Float]
        public var zeroPoint: [Int64]
        public var quantizedDimension: Int
    }

    public struct Tensor {
        public var name: String
        public var type: TensorType
        public var shape: [Int]
        /// Index into the model's buffers; buffer 0 is the empty sentinel.
        public var buffer: Int
        public var quantization: Quantization?
        /// The bytes of constant data in the file; empty for activations.
        public var dataRange: Range<Int>
    }

    /// `TensorType` of the schema.
    public enum TensorType: Int, CaseIterable {
        case float32 = 0, float16, int32, uint8, int64, string, bool, int16, complex64, int8
        case float64, complex128, uint64, resource, variant, uint32, uint16, int4, bfloat16

        /// The schema's name, e.g. `UINT8`.
        public var name: String {
            switch self {
            case .float32: return "FLOAT32"
            case .float16: return "FLOAT16"
            case .int32: return "INT32"
            case .uint8: return "UINT8"
            case .int64: return "INT64"
            case .string: return "STRING"
            case .bool: return "BOOL"
            case .int16: return "INT16"
            case .complex64: return "COMPLEX64"
            case .int8: return "INT8"
            case .float64: return "FLOAT64"
            case .complex128: return "COMPLEX128"
            case .uint64: return "UINT64"
            case .resource: return "RESOURCE"
            case .variant: return "VARIANT"
            case .uint32: return "UINT32"
            case .uint16: return "UINT16"
            case .int4: return "INT4"
            case .bfloat16: return "BFLOAT16"
            }
        }

        /// The byte encoding of the types that convert to float32; nil for the others.
        var encoding: ScalarEncoding? {
            switch self {
            case .float32: return .float32
            case .float16: return .float16
            case .bfloat16: return .bfloat16
            case .float64: return .float64
            case .int8: return .int8
            case .uint8: return .uint8
            case .int16: return .int16
            case .uint16: return .uint16
            case .int32: return .int32
            case .uint32: return .uint32
            case .int64: return .int64
            case .uint64: return .uint64
            case .string, .bool, .complex64, .complex128, .resource, .variant, .int4: return nil
            }
        }
    }

    public enum Padding: Int, Equatable {
        case same = 0
        case valid = 1
    }

    /// `ActivationFunctionType` of the schema.
    public enum FusedActivation: Int, Equatable {
        case none = 0, relu, reluN1To1, relu6, tanh, signBit

        public var name: String {
            switch self {
            case .none: return "NONE"
            case .relu: return "RELU"
            case .reluN1To1: return "RELU_N1_TO_1"
            case .relu6: return "RELU6"
            case .tanh: return "TANH"
            case .signBit: return "SIGN_BIT"
            }
        }
    }

    public struct Conv2DOptions: Equatable {
        public var padding: Padding
        public var strideWidth: Int
        public var strideHeight: Int
        public var activation: FusedActivation
        public var dilationWidth: Int
        public var dilationHeight: Int
    }

    public struct DepthwiseConv2DOptions: Equatable {
        public var padding: Padding
        public var strideWidth: Int
        public var strideHeight: Int
        public var depthMultiplier: Int
        public var activation: FusedActivation
        public var dilationWidth: Int
        public var dilationHeight: Int
    }

    public struct FullyConnectedOptions: Equatable {
        public var activation: FusedActivation
        /// 0 is `DEFAULT` (row-major `[out, in]`); 1 is `SHUFFLED4x16INT8`.
        public var weightsFormat: Int
    }

    public struct Pool2DOptions: Equatable {
        public var padding: Padding
        public var strideWidth: Int
        public var strideHeight: Int
        public var filterWidth: Int
        public var filterHeight: Int
        public var activation: FusedActivation
    }

    /// The decoded `builtin_options` of an operator.
    public enum Options: Equatable {
        case none
        case conv2D(Conv2DOptions)
        case depthwiseConv2D(DepthwiseConv2DOptions)
        case fullyConnected(FullyConnectedOptions)
        case pool2D(Pool2DOptions)
        /// Options of another type, kept by their `BuiltinOptions` union tag.
        case other(type: Int)
    }

    public struct Operator {
        /// The `BuiltinOperator` code: the larger of `builtin_code` and `deprecated_builtin_code`.
        public var builtinCode: Int
        /// The name of a custom operator (`builtinCode` 32).
        public var customCode: String?
        /// Tensor indices; -1 marks an omitted optional input.
        public var inputs: [Int]
        public var outputs: [Int]
        public var options: Options

        public var name: String { customCode.map { "CUSTOM(\($0))" } ?? TFLiteModel.operatorName(builtinCode) }
    }

    /// `BuiltinOperator` codes of the operators in MobileNet files.
    public enum Builtin {
        public static let add = 0
        public static let averagePool2D = 1
        public static let conv2D = 3
        public static let depthwiseConv2D = 4
        public static let fullyConnected = 9
        public static let logistic = 14
        public static let relu = 19
        public static let relu6 = 21
        public static let reshape = 22
        public static let softmax = 25
        public static let mean = 40
        public static let hardSwish = 117
    }

    /// Reads and validates the file at `path`.
    public static func load(path: String) throws -> TFLiteModel {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw MNCError("\(path): cannot read the file: \(error.localizedDescription)")
        }
        return try parse(bytes: [UInt8](data), path: path)
    }

    /// Parses a TFLite flatbuffer held in memory; `path` names it in error messages.
    public static func parse(bytes: [UInt8], path: String) throws -> TFLiteModel {
        let reader = FlatBufferReader(bytes: bytes, file: path, format: "TFLite")
        let model = try reader.rootTable(identifier: "TFL3", name: "Model")

        let version = Int(try model.scalar(0, "version", default: UInt32(0)))
        let description = try model.string(3, "description") ?? ""
        let codes = try readOperatorCodes(model)
        let bufferRanges = try readBuffers(model, reader: reader)

        guard let subgraphs = try model.vector(2, "subgraphs", elementSize: 4), subgraphs.count > 0 else {
            throw reader.error("Model.subgraphs: the model has no subgraph")
        }
        let subgraph = try subgraphs.table(at: 0)
        let tensors = try readTensors(subgraph, bufferRanges: bufferRanges)
        let operators = try readOperators(subgraph, codes: codes, tensorCount: tensors.count)
        let inputs = try subgraph.int32s(1, "inputs")
        let outputs = try subgraph.int32s(2, "outputs")
        for (name, list) in [("inputs", inputs), ("outputs", outputs)] {
            if let bad = list.first(where: { $0 < 0 || $0 >= tensors.count }) {
                throw reader.error("\(subgraph.path).\(name): tensor index \(bad) is out of range (\(tensors.count) tensors)")
            }
        }
        return TFLiteModel(path: path, version: version, description: description, subgraphCount: subgraphs.count,
                           tensors: tensors, operators: operators, inputs: inputs, outputs: outputs, bytes: bytes)
    }

    private struct OperatorCode {
        var builtinCode: Int
        var customCode: String?
    }

    private static func readOperatorCodes(_ model: FlatBufferTable) throws -> [OperatorCode] {
        guard let vector = try model.vector(1, "operator_codes", elementSize: 4) else { return [] }
        return try (0..<vector.count).map { index in
            let code = try vector.table(at: index)
            // Older files store the code only in the byte field and leave the int32 field at 0.
            // Newer files store codes above 127 in the int32 field and 127 in the byte field.
            let deprecated = Int(try code.scalar(0, "deprecated_builtin_code", default: Int8(0)))
            let extended = Int(try code.scalar(3, "builtin_code", default: Int32(0)))
            return OperatorCode(builtinCode: max(deprecated, extended), customCode: try code.string(1, "custom_code"))
        }
    }

    /// Returns the data range of every buffer. Files over 2 GB store `offset` and `size`
    /// relative to the start of the file (used when `offset > 1`), others an inline `data` vector.
    private static func readBuffers(_ model: FlatBufferTable, reader: FlatBufferReader) throws -> [Range<Int>] {
        guard let vector = try model.vector(4, "buffers", elementSize: 4) else { return [] }
        return try (0..<vector.count).map { index in
            let buffer = try vector.table(at: index)
            let offset = try buffer.scalar(1, "offset", default: UInt64(0))
            if offset > 1 {
                let size = try buffer.scalar(2, "size", default: UInt64(0))
                let fileSize = UInt64(reader.bytes.count)
                guard offset <= fileSize, size <= fileSize - offset else {
                    throw reader.error("\(buffer.path): data at offset \(offset) of \(size) bytes extends past the end of the file (\(fileSize) bytes)")
                }
                return Int(offset)..<Int(offset + size)
            }
            return try buffer.vector(0, "data", elementSize: 1)?.byteRange ?? 0..<0
        }
    }

    private static func readTensors(_ subgraph: FlatBufferTable, bufferRanges: [Range<Int>]) throws -> [Tensor] {
        guard let vector = try subgraph.vector(0, "tensors", elementSize: 4) else { return [] }
        let reader = subgraph.reader
        return try (0..<vector.count).map { index in
            let table = try vector.table(at: index)
            let shape = try table.int32s(0, "shape")
            if let negative = shape.first(where: { $0 < 0 }) {
                throw reader.error("\(table.path).shape: dimension \(negative) is negative")
            }
            let typeCode = Int(try table.scalar(1, "type", default: Int8(0)))
            guard let type = TensorType(rawValue: typeCode) else {
                throw reader.error("\(table.path).type: unknown tensor type \(typeCode)")
            }
            let buffer = Int(try table.scalar(2, "buffer", default: UInt32(0)))
            guard buffer < max(bufferRanges.count, 1) else {
                throw reader.error("\(table.path).buffer: buffer index \(buffer) is out of range (\(bufferRanges.count) buffers)")
            }
            let name = try table.string(3, "name") ?? ""
            let quantization = try table.table(4, "quantization").flatMap(readQuantization)
            return Tensor(name: name, type: type, shape: shape, buffer: buffer, quantization: quantization,
                          dataRange: bufferRanges.isEmpty ? 0..<0 : bufferRanges[buffer])
        }
    }

    /// Returns nil for a quantization table without scales (the converter writes empty tables).
    private static func readQuantization(_ table: FlatBufferTable) throws -> Quantization? {
        guard let scales = try table.vector(2, "scale", elementSize: 4), scales.count > 0 else { return nil }
        let scale = try (0..<scales.count).map { try scales.float32(at: $0) }
        var zeroPoint: [Int64] = []
        if let points = try table.vector(3, "zero_point", elementSize: 8) {
            zeroPoint = try (0..<points.count).map { try points.integer(Int64.self, at: $0) }
        }
        let dimension = Int(try table.scalar(6, "quantized_dimension", default: Int32(0)))
        return Quantization(scale: scale, zeroPoint: zeroPoint, quantizedDimension: dimension)
    }

    private static func readOperators(_ subgraph: FlatBufferTable, codes: [OperatorCode], tensorCount: Int) throws -> [Operator] {
        guard let vector = try subgraph.vector(3, "operators", elementSize: 4) else { return [] }
        let reader = subgraph.reader
        return try (0..<vector.count).map { index in
            let table = try vector.table(at: index)
            let opcodeIndex = Int(try table.scalar(0, "opcode_index", default: UInt32(0)))
            guard opcodeIndex < codes.count else {
                throw reader.error("\(table.path).opcode_index: \(opcodeIndex) is out of range (\(codes.count) operator codes)")
            }
            let inputs = try table.int32s(1, "inputs")
            let outputs = try table.int32s(2, "outputs")
            for (name, list) in [("inputs", inputs), ("outputs", outputs)] {
                if let bad = list.first(where: { $0 < -1 || $0 >= tensorCount }) {
                    throw reader.error("\(table.path).\(name): tensor index \(bad) is out of range (\(tensorCount) tensors)")
                }
            }
            let optionsType = Int(try table.scalar(3, "builtin_options_type", default: UInt8(0)))
            let optionsTable = try table.table(4, "builtin_options")
            return Operator(builtinCode: codes[opcodeIndex].builtinCode, customCode: codes[opcodeIndex].customCode,
                            inputs: inputs, outputs: outputs,
                            options: try readOptions(type: optionsType, table: optionsTable))
        }
    }

    /// Decodes the `BuiltinOptions` union member with tag `type`: 1 `Conv2DOptions`,
    /// 2 `DepthwiseConv2DOptions`, 5 `Pool2DOptions`, 8 `FullyConnectedOptions`.
    /// A tag without a table decodes with the schema defaults.
    private static func readOptions(type: Int, table: FlatBufferTable?) throws -> Options {
        guard let table else {
            return type == 0 ? .none : .other(type: type)
        }
        func padding() throws -> Padding {
            let code = Int(try table.scalar(0, "padding", default: Int8(0)))
            guard let value = Padding(rawValue: code) else {
                throw table.reader.error("\(table.path).padding: unknown padding \(code)")
            }
            return value
        }
        func activation(_ id: Int) throws -> FusedActivation {
            let code = Int(try table.scalar(id, "fused_activation_function", default: Int8(0)))
            guard let value = FusedActivation(rawValue: code) else {
                throw table.reader.error("\(table.path).fused_activation_function: unknown activation \(code)")
            }
            return value
        }
        func int(_ id: Int, _ name: String, default value: Int32) throws -> Int {
            Int(try table.scalar(id, name, default: value))
        }
        switch type {
        case 1:
            return .conv2D(Conv2DOptions(
                padding: try padding(), strideWidth: try int(1, "stride_w", default: 0),
                strideHeight: try int(2, "stride_h", default: 0), activation: try activation(3),
                dilationWidth: try int(4, "dilation_w_factor", default: 1),
                dilationHeight: try int(5, "dilation_h_factor", default: 1)))
        case 2:
            return .depthwiseConv2D(DepthwiseConv2DOptions(
                padding: try padding(), strideWidth: try int(1, "stride_w", default: 0),
                strideHeight: try int(2, "stride_h", default: 0),
                depthMultiplier: try int(3, "depth_multiplier", default: 0), activation: try activation(4),
                dilationWidth: try int(5, "dilation_w_factor", default: 1),
                dilationHeight: try int(6, "dilation_h_factor", default: 1)))
        case 5:
            return .pool2D(Pool2DOptions(
                padding: try padding(), strideWidth: try int(1, "stride_w", default: 0),
                strideHeight: try int(2, "stride_h", default: 0),
                filterWidth: try int(3, "filter_width", default: 0),
                filterHeight: try int(4, "filter_height", default: 0), activation: try activation(5)))
        case 8:
            return .fullyConnected(FullyConnectedOptions(
                activation: try activation(0),
                weightsFormat: Int(try table.scalar(1, "weights_format", default: Int8(0)))))
        default:
            return .other(type: type)
        }
    }
}

extension TFLiteModel {
    /// Converts tensor `index` to float32 in its stored (row-major, TFLite) order.
    ///
    /// Quantized integer tensors become `(q - zero_point) * scale`, per tensor or per slice along
    /// `quantized_dimension`; integer tensors without scales keep their values; float16,
    /// bfloat16 and float64 are converted.
    public func values(ofTensor index: Int) throws -> [Float] {
        guard index >= 0, index < tensors.count else {
            throw MNCError("\(path): tensor index \(index) is out of range (\(tensors.count) tensors)")
        }
        let tensor = tensors[index]
        let label = "tensor \(index) (\(tensor.name))"
        guard let encoding = tensor.type.encoding else {
            throw MNCError("\(path): \(label) has type \(tensor.type.name), which cannot be converted to float32")
        }
        let count = try checkedElementCount(tensor.shape, label: label)
        let (byteCount, overflow) = count.multipliedReportingOverflow(by: encoding.size)
        guard !overflow else {
            throw MNCError("\(path): \(label) shape \(describeShape(tensor.shape)) is too large")
        }
        guard !tensor.dataRange.isEmpty || byteCount == 0 else {
            throw MNCError("\(path): \(label) has no constant data")
        }
        guard tensor.dataRange.count == byteCount else {
            throw MNCError("\(path): \(label) holds \(tensor.dataRange.count) bytes, but its shape \(describeShape(tensor.shape)) of \(tensor.type.name) needs \(byteCount)")
        }
        let raw = decodeNumbers(bytes[tensor.dataRange], as: encoding, count: count)
        guard let quantization = tensor.quantization, encoding.isInteger else {
            return raw.map { Float($0) }
        }
        return try dequantize(raw, tensor: tensor, quantization: quantization, label: label)
    }

    private func dequantize(_ raw: [Double], tensor: Tensor, quantization: Quantization, label: String) throws -> [Float] {
        let scales = quantization.scale
        let zeroPoints = quantization.zeroPoint.isEmpty
            ? [Int64](repeating: 0, count: scales.count) : quantization.zeroPoint
        guard zeroPoints.count == scales.count else {
            throw MNCError("\(path): \(label) has \(scales.count) quantization scales but \(zeroPoints.count) zero points")
        }
        if scales.count == 1 {
            let scale = Double(scales[0]), zeroPoint = Double(zeroPoints[0])
            return raw.map { Float(($0 - zeroPoint) * scale) }
        }
        let axis = quantization.quantizedDimension
        guard axis >= 0, axis < tensor.shape.count else {
            throw MNCError("\(path): \(label) has quantized_dimension \(axis), but its shape \(describeShape(tensor.shape)) has \(tensor.shape.count) dimensions")
        }
        guard tensor.shape[axis] == scales.count else {
            throw MNCError("\(path): \(label) has \(scales.count) quantization scales, but dimension \(axis) of its shape \(describeShape(tensor.shape)) is \(tensor.shape[axis])")
        }
        // Elements of one slice along `axis` repeat every `inner` positions.
        let inner = tensor.shape[(axis + 1)...].reduce(1, *)
        let channels = scales.count
        var result = [Float](repeating: 0, count: raw.count)
        for flat in 0..<raw.count {
            let channel = (flat / inner) % channels
            result[flat] = Float((raw[flat] - Double(zeroPoints[channel])) * Double(scales[channel]))
        }
        return result
    }

    /// Returns the `BuiltinOperator` name for `code`, e.g. `CONV_2D`, or `BUILTIN_<code>` when unknown.
    public static func operatorName(_ code: Int) -> String {
        if code >= 0, code < builtinOperatorNames.count {
            return builtinOperatorNames[code]
        }
        return "BUILTIN_\(code)"
    }

    /// `BuiltinOperator` names by code, 0 through 126 (`BATCH_MATMUL`).
    static let builtinOperatorNames: [String] = [
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE",
        "DEQUANTIZE", "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP",
        "L2_NORMALIZATION", "L2_POOL_2D", "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "LSH_PROJECTION",
        "LSTM", "MAX_POOL_2D", "MUL", "RELU", "RELU_N1_TO_1", "RELU6", "RESHAPE", "RESIZE_BILINEAR",
        "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH", "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL",
        "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD", "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER",
        "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN", "SUB", "DIV", "SQUEEZE",
        "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN", "EXP", "TOPK_V2",
        "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU", "MAXIMUM",
        "ARG_MAX", "MINIMUM", "LESS", "NEG", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL", "SELECT",
        "SLICE", "SIN", "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL",
        "LOG", "SUM", "SQRT", "RSQRT", "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD",
        "REDUCE_MAX", "PACK", "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND", "LOGICAL_NOT", "UNPACK",
        "REDUCE_MIN", "FLOOR_DIV", "REDUCE_ANY", "SQUARE", "ZEROS_LIKE", "FILL", "FLOOR_MOD", "RANGE",
        "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS", "SPLIT_V",
        "UNIQUE", "CEIL", "REVERSE_V2", "ADD_N", "GATHER_ND", "COS", "WHERE", "RANK", "ELU",
        "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE", "MATRIX_SET_DIAG", "ROUND", "HARD_SWISH", "IF",
        "WHILE", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SCATTER_ND", "SELECT_V2",
        "DENSIFY", "SEGMENT_SUM", "BATCH_MATMUL",
    ]
}

/// Returns the product of `shape`, after checking for negative dimensions and overflow.
func checkedElementCount(_ shape: [Int], label: String) throws -> Int {
    var count = 1
    for dimension in shape {
        guard dimension >= 0 else {
            throw MNCError("\(label): dimension \(dimension) of shape \(describeShape(shape)) is negative")
        }
        let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
        guard !overflow else {
            throw MNCError("\(label): shape \(describeShape(shape)) has too many elements")
        }
        count = product
    }
    return count
}

/// `8x3x3x3`, or `scalar` for rank 0.
func describeShape(_ shape: [Int]) -> String {
    shape.isEmpty ? "scalar" : shape.map(String.init).joined(separator: "x")
}

/// A little-endian number encoding of tensor data in TFLite and ONNX files.
enum ScalarEncoding {
    case float32, float16, bfloat16, float64, int8, uint8, int16, uint16, int32, uint32, int64, uint64

    var size: Int {
        switch self {
        case .int8, .uint8: return 1
        case .float16, .bfloat16, .int16, .uint16: return 2
        case .float32, .int32, .uint32: return 4
        case .float64, .int64, .uint64: return 8
        }
    }

    var isInteger: Bool {
        switch self {
        case .float32, .float16, .bfloat16, .float64: return false
        case .int8, .uint8, .int16, .uint16, .int32, .uint32, .int64, .uint64: return true
        }
    }
}

/// Decodes `count` numbers from `bytes`, which must hold exactly `count × encoding.size` bytes.
/// Doubles hold every value of these encodings exactly except 64-bit integers beyond 2^53.
func decodeNumbers(_ bytes: ArraySlice<UInt8>, as encoding: ScalarEncoding, count: Int) -> [Double] {
    var result = [Double](repeating: 0, count: count)
    bytes.withUnsafeBytes { raw in
        func load<T: FixedWidthInteger>(_: T.Type, _ index: Int) -> T {
            T(littleEndian: raw.loadUnaligned(fromByteOffset: index * MemoryLayout<T>.size, as: T.self))
        }
        for index in 0..<count {
            switch encoding {
            case .float32: result[index] = Double(Float(bitPattern: load(UInt32.self, index)))
            case .float16: result[index] = Double(floatFromHalf(load(UInt16.self, index)))
            case .bfloat16: result[index] = Double(Float(bitPattern: UInt32(load(UInt16.self, index)) << 16))
            case .float64: result[index] = Double(bitPattern: load(UInt64.self, index))
            case .int8: result[index] = Double(load(Int8.self, index))
            case .uint8: result[index] = Double(load(UInt8.self, index))
            case .int16: result[index] = Double(load(Int16.self, index))
            case .uint16: result[index] = Double(load(UInt16.self, index))
            case .int32: result[index] = Double(load(Int32.self, index))
            case .uint32: result[index] = Double(load(UInt32.self, index))
            case .int64: result[index] = Double(load(Int64.self, index))
            case .uint64: result[index] = Double(load(UInt64.self, index))
            }
        }
    }
    return result
}

/// Converts IEEE 754 binary16 bits to float32, including subnormals, infinities and NaN.
func floatFromHalf(_ bits: UInt16) -> Float {
    let sign = UInt32(bits & 0x8000) << 16
    let exponent = UInt32(bits >> 10) & 0x1F
    let mantissa = UInt32(bits & 0x03FF)
    if exponent == 0x1F {
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    if exponent == 0 {
        // Subnormal or zero: mantissa × 2^-24.
        let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -magnitude : magnitude
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
}

extension TFLiteModel {
    /// Returns the CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED operators in execution order,
    /// with weights dequantized and converted to the graph's layout. CONV_2D filters
    /// `[O, kh, kw, I]` become `[O, I, kh, kw]`, depthwise filters `[1, kh, kw, O]` become
    /// `[O, 1, kh, kw]`, and fully-connected weights `[O, I]` stay as they are.
    func weightedLayers(file: String) throws -> [FileLayer] {
        // readers[t] lists the operators that read tensor t.
        var readers = [[Int]](repeating: [], count: tensors.count)
        for (index, op) in operators.enumerated() {
            for input in Set(op.inputs) where input >= 0 {
                readers[input].append(index)
            }
        }
        var layers: [FileLayer] = []
        for (index, op) in operators.enumerated() {
            switch op.builtinCode {
            case Builtin.conv2D, Builtin.depthwiseConv2D, Builtin.fullyConnected:
                var layer = try weightedLayer(op, label: "operator \(index) (\(op.name))", file: file)
                if layer.activation.activation == .identity, let output = op.outputs.first, output >= 0,
                   readers[output].count == 1, !outputs.contains(output) {
                    layer.activation = TFLiteModel.standaloneActivation(operators[readers[output][0]].builtinCode)
                        ?? layer.activation
                }
                layers.append(layer)
            default:
                continue
            }
        }
        return layers
    }

    /// Returns the activation that a standalone operator computes (RELU, RELU6, HARD_SWISH),
    /// which applies when it follows an operator without a fused activation.
    private static func standaloneActivation(_ code: Int) -> FileActivation? {
        switch code {
        case Builtin.relu: return FileActivation(.relu)
        case Builtin.relu6: return FileActivation(.relu6)
        case Builtin.hardSwish: return FileActivation(.hardswish)
        default: return nil
        }
    }

    private static func fileActivation(_ fused: FusedActivation) -> FileActivation {
        switch fused {
        case .none: return .identity
        case .relu: return FileActivation(.relu)
        case .relu6: return FileActivation(.relu6)
        case .reluN1To1, .tanh, .signBit: return FileActivation(activation: nil, name: fused.name)
        }
    }

    private func weightedLayer(_ op: Operator, label: String, file: String) throws -> FileLayer {
        func input(_ slot: Int) -> Int? {
            slot < op.inputs.count && op.inputs[slot] >= 0 ? op.inputs[slot] : nil
        }
        guard let filterIndex = input(1) else {
            throw MNCError("\(file): \(label) has no weight tensor")
        }
        let filter = tensors[filterIndex].shape
        let values = try values(ofTensor: filterIndex)
        let inputShape = input(0).map { tensors[$0].shape } ?? []
        func requireRank(_ rank: Int) throws {
            guard filter.count == rank, filter.allSatisfy({ $0 > 0 }) else {
                throw MNCError("\(file): \(label) has a weight tensor of shape \(describeShape(filter)), expected \(rank) positive dimensions")
            }
        }

        var layer: FileLayer
        switch op.options {
        case .conv2D(let options) where op.builtinCode == Builtin.conv2D:
            try requireRank(4)
            let (outputs, kernelHeight, kernelWidth, inputsPerGroup) = (filter[0], filter[1], filter[2], filter[3])
            let channels = inputShape.count == 4 ? inputShape[3] : inputsPerGroup
            guard channels > 0, channels % inputsPerGroup == 0 else {
                throw MNCError("\(file): \(label) reads \(channels) input channels, which is not a multiple of the \(inputsPerGroup) input channels of its weight tensor")
            }
            var weight = [Float](repeating: 0, count: values.count)
            for o in 0..<outputs {
                for y in 0..<kernelHeight {
                    for x in 0..<kernelWidth {
                        for i in 0..<inputsPerGroup {
                            weight[((o * inputsPerGroup + i) * kernelHeight + y) * kernelWidth + x] =
                                values[((o * kernelHeight + y) * kernelWidth + x) * inputsPerGroup + i]
                        }
                    }
                }
            }
            layer = FileLayer(kind: .convolution, label: label, inChannels: channels, outChannels: outputs, weight: weight)
            layer.groups = channels / inputsPerGroup
            layer.kernelHeight = kernelHeight
            layer.kernelWidth = kernelWidth
            layer.strideHeight = options.strideHeight
            layer.strideWidth = options.strideWidth
            layer.dilationHeight = options.dilationHeight
            layer.dilationWidth = options.dilationWidth
            layer.padding = options.padding == .same ? .same(extraBefore: false) : .valid
            layer.activation = TFLiteModel.fileActivation(options.activation)

        case .depthwiseConv2D(let options) where op.builtinCode == Builtin.depthwiseConv2D:
            try requireRank(4)
            guard filter[0] == 1 else {
                throw MNCError("\(file): \(label) has a depthwise weight tensor of shape \(describeShape(filter)), expected 1 in the first dimension")
            }
            let (kernelHeight, kernelWidth, outputs) = (filter[1], filter[2], filter[3])
            let channels = inputShape.count == 4 ? inputShape[3]
                : (options.depthMultiplier > 0 ? outputs / options.depthMultiplier : outputs)
            guard channels > 0, outputs % channels == 0 else {
                throw MNCError("\(file): \(label) has \(outputs) output channels, which is not a multiple of its \(channels) input channels")
            }
            var weight = [Float](repeating: 0, count: values.count)
            for o in 0..<outputs {
                for y in 0..<kernelHeight {
                    for x in 0..<kernelWidth {
                        weight[(o * kernelHeight + y) * kernelWidth + x] = values[(y * kernelWidth + x) * outputs + o]
                    }
                }
            }
            layer = FileLayer(kind: .depthwise, label: label, inChannels: channels, outChannels: outputs, weight: weight)
            layer.groups = channels
            layer.kernelHeight = kernelHeight
            layer.kernelWidth = kernelWidth
            layer.strideHeight = options.strideHeight
            layer.strideWidth = options.strideWidth
            layer.dilationHeight = options.dilationHeight
            layer.dilationWidth = options.dilationWidth
            layer.padding = options.padding == .same ? .same(extraBefore: false) : .valid
            layer.activation = TFLiteModel.fileActivation(options.activation)

        case .fullyConnected(let options) where op.builtinCode == Builtin.fullyConnected:
            try requireRank(2)
            guard options.weightsFormat == 0 else {
                throw MNCError("\(file): \(label) stores its weights in the shuffled format \(options.weightsFormat); only the default row-major format can be read")
            }
            layer = FileLayer(kind: .fullyConnected, label: label, inChannels: filter[1], outChannels: filter[0],
                              weight: values)
            layer.activation = TFLiteModel.fileActivation(options.activation)

        default:
            throw MNCError("\(file): \(label) has no \(op.name) options")
        }

        try layer.checkSteps(file: file)
        if let biasIndex = input(2) {
            let bias = try self.values(ofTensor: biasIndex)
            guard bias.count == layer.outChannels else {
                throw MNCError("\(file): \(label) has \(bias.count) bias values for \(layer.outChannels) output channels")
            }
            layer.bias = bias
        }
        return layer
    }
}

/// Lists a TFLite model for `mnc inspect`: header, tensors (name, type, shape, quantization,
/// constant bytes) and operators with their inputs, outputs and options.
public func describeTFLite(_ model: TFLiteModel) -> String {
    var lines: [String] = []
    lines.append("\(model.path): TFLite model, schema version \(model.version), \(model.subgraphCount) subgraph(s), description '\(model.description)'")
    lines.append("inputs: " + model.inputs.map { "\($0) \(model.tensors[$0].name)" }.joined(separator: ", "))
    lines.append("outputs: " + model.outputs.map { "\($0) \(model.tensors[$0].name)" }.joined(separator: ", "))

    lines.append("tensors (\(model.tensors.count)):")
    for (index, tensor) in model.tensors.enumerated() {
        var line = "  \(index) \(tensor.name): \(tensor.type.name) \(describeShape(tensor.shape))"
        if !tensor.dataRange.isEmpty {
            line += ", \(tensor.dataRange.count) bytes"
        }
        if let quantization = tensor.quantization {
            if quantization.scale.count == 1 {
                line += ", scale \(quantization.scale[0]) zero point \(quantization.zeroPoint.first ?? 0)"
            } else {
                line += ", \(quantization.scale.count) scales along dimension \(quantization.quantizedDimension)"
            }
        }
        lines.append(line)
    }

    lines.append("operators (\(model.operators.count)):")
    for (index, op) in model.operators.enumerated() {
        let inputs = op.inputs.map(String.init).joined(separator: ", ")
        let outputs = op.outputs.map(String.init).joined(separator: ", ")
        var line = "  \(index) \(op.name): (\(inputs)) -> (\(outputs))"
        let options = describeOptions(op.options)
        if !options.isEmpty {
            line += " " + options
        }
        lines.append(line)
    }
    return lines.joined(separator: "\n") + "\n"
}

private func describeOptions(_ options: TFLiteModel.Options) -> String {
    func padding(_ value: TFLiteModel.Padding) -> String { value == .same ? "SAME" : "VALID" }
    switch options {
    case .none, .other:
        return ""
    case .conv2D(let o):
        return "padding \(padding(o.padding)) stride \(o.strideHeight)x\(o.strideWidth) dilation \(o.dilationHeight)x\(o.dilationWidth) activation \(o.activation.name)"
    case .depthwiseConv2D(let o):
        return "padding \(padding(o.padding)) stride \(o.strideHeight)x\(o.strideWidth) dilation \(o.dilationHeight)x\(o.dilationWidth) depth multiplier \(o.depthMultiplier) activation \(o.activation.name)"
    case .fullyConnected(let o):
        return "activation \(o.activation.name)" + (o.weightsFormat == 0 ? "" : " weights format \(o.weightsFormat)")
    case .pool2D(let o):
        return "padding \(padding(o.padding)) stride \(o.strideHeight)x\(o.strideWidth) filter \(o.filterHeight)x\(o.filterWidth) activation \(o.activation.name)"
    }
}
