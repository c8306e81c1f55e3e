import Foundation

/// An ONNX model (`ModelProto`) read with the protobuf wire-format reader.
///
/// Field numbers follow `onnx/onnx.proto` (IR version 8 and later keep them). Initializer data
/// stays in the file bytes, or in its external file, until `ONNXTensor.floatValues()` reads it.
public struct ONNXModel {
    public var path: String
    public var irVersion: Int64
    public var producerName: String
    public var producerVersion: String
    public var opsetImports: [OpsetImport]
    public var graph: ONNXGraph

    public struct OpsetImport: Equatable {
        /// Empty for the default `ai.onnx` domain.
        public var domain: String
        public var version: Int64
    }

    /// Reads and validates the file at `path`; external data paths resolve against its directory.
    public static func load(path: String) throws -> ONNXModel {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw MNCError("\(path): cannot read the file: \(error.localizedDescription)")
        }
        return try parse(bytes: [UInt8](data), path: path)
    }

    /// Parses an ONNX model held in memory; `path` names it in error messages and locates
    /// external data.
    public static func parse(bytes: [UInt8], path: String) throws -> ONNXModel {
        let reader = ProtobufReader(bytes: bytes, file: path, format: "ONNX")
        let parser = ONNXParser(bytes: bytes, file: path)
        let root = reader.root(name: "ModelProto")
        var model = ONNXModel(path: path, irVersion: 0, producerName: "", producerVersion: "", opsetImports: [],
                              graph: ONNXGraph())
        var foundGraph = false
        try root.forEachField { field, value in
            switch field {
            case 1: model.irVersion = try root.int64(value, "ir_version")
            case 2: model.producerName = try root.string(value, "producer_name")
            case 3: model.producerVersion = try root.string(value, "producer_version")
            case 7:
                model.graph = try parser.graph(try root.message(value, "graph"))
                foundGraph = true
            case 8:
                let entry = try root.message(value, "opset_import[\(model.opsetImports.count)]")
                var opset = OpsetImport(domain: "", version: 0)
                try entry.forEachField { field, value in
                    switch field {
                    case 1: opset.domain = try entry.string(value, "domain")
                    case 2: opset.version = try entry.int64(value, "version")
                    default: break
                    }
                }
                model.opsetImports.append(opset)
            default: break
            }
        }
        guard foundGraph else {
            throw reader.error("ModelProto has no graph (field 7)")
        }
        return model
    }
}

public struct ONNXGraph {
    public var name: String = ""
    /// Nodes in the file's order, which ONNX requires to be topological.
    public var nodes: [ONNXNode] = []
    public var initializers: [ONNXTensor] = []
    public var inputs: [ONNXValueInfo] = []
    public var outputs: [ONNXValueInfo] = []

    public init() {}
}

public struct ONNXNode {
    public var name: String = ""
    public var opType: String = ""
    /// Empty for the default `ai.onnx` domain.
    public var domain: String = ""
    /// Value names; an empty name marks an omitted optional input.
    public var inputs: [String] = []
    public var outputs: [String] = []
    public var attributes: [ONNXAttribute] = []

    public func attribute(_ name: String) -> ONNXAttribute? {
        attributes.first { $0.name == name }
    }
}

public struct ONNXAttribute {
    public var name: String = ""
    /// `AttributeProto.AttributeType`: 1 FLOAT, 2 INT, 3 STRING, 4 TENSOR, 5 GRAPH, 6 FLOATS,
    /// 7 INTS, 8 STRINGS, 9 TENSORS, 10 GRAPHS.
    public var type: Int = 0
    public var float: Float = 0
    public var int: Int64 = 0
    public var string: String = ""
    public var tensor: ONNXTensor?
    public var floats: [Float] = []
    public var ints: [Int64] = []
    public var strings: [String] = []
    public var tensors: [ONNXTensor] = []
    /// The `g` subgraph followed by the `graphs` list.
    public var graphs: [ONNXGraph] = []

    public static let typeNames = [0: "UNDEFINED", 1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH",
                                   6: "FLOATS", 7: "INTS", 8: "STRINGS", 9: "TENSORS", 10: "GRAPHS",
                                   11: "SPARSE_TENSOR", 12: "SPARSE_TENSORS", 13: "TYPE_PROTO", 14: "TYPE_PROTOS"]

    /// The value in the form `describeONNX` prints, e.g. `[1, 1, 1, 1]` or `0.5`.
    public var valueDescription: String {
        switch type {
        case 1: return "\(float)"
        case 2: return "\(int)"
        case 3: return "'\(string)'"
        case 4: return tensor.map { "tensor \($0.dataTypeName) \(describeShape($0.dims))" } ?? "tensor"
        case 5, 10: return "\(graphs.count) graph(s)"
        case 6: return "[" + floats.map { "\($0)" }.joined(separator: ", ") + "]"
        case 7: return "[" + ints.map { "\($0)" }.joined(separator: ", ") + "]"
        case 8: return "[" + strings.map { "'\($0)'" }.joined(separator: ", ") + "]"
        case 9: return "\(tensors.count) tensor(s)"
        default: return ONNXAttribute.typeNames[type] ?? "type \(type)"
        }
    }
}

/// A graph input or output.
public struct ONNXValueInfo {
    public var name: String = ""
    /// `TensorProto.DataType` of the elements; 0 when the type is not a tensor type.
    public var elementType: Int = 0
    /// Each dimension's size, or nil for a symbolic or unknown one.
    public var dims: [Int64?] = []
}

/// A `TensorProto`: an initializer or an attribute value.
public struct ONNXTensor {
    public var name: String
    /// `TensorProto.DataType`, e.g. 1 FLOAT, 7 INT64, 10 FLOAT16.
    public var dataType: Int
    public var dims: [Int]
    var storage: Storage
    /// The model file, named in error messages.
    var file: String

    enum Storage {
        case none
        case raw(ArraySlice<UInt8>)
        case floats([Float])
        case doubles([Double])
        /// `int32_data`, which also carries 8- and 16-bit integers and float16/bfloat16 bits.
        case int32s([Int64])
        case int64s([Int64])
        /// `uint64_data`, which also carries uint32.
        case uint64s([Int64])
        case external(ExternalData)
    }

    /// Data in another file: `location` as written in the model, resolved to `resolvedPath`.
    struct ExternalData {
        var location: String
        var resolvedPath: String
        var offset: Int
        var length: Int?
    }

    public static let dataTypeNames = [0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16",
                                       6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE",
                                       12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16"]

    public var dataTypeName: String { ONNXTensor.dataTypeNames[dataType] ?? "type \(dataType)" }

    /// True when the data lives in an external file.
    public var isExternal: Bool {
        if case .external = storage { return true }
        return false
    }

    var encoding: ScalarEncoding? {
        switch dataType {
        case 1: return .float32
        case 2: return .uint8
        case 3: return .int8
        case 4: return .uint16
        case 5: return .int16
        case 6: return .int32
        case 7: return .int64
        case 10: return .float16
        case 11: return .float64
        case 12: return .uint32
        case 13: return .uint64
        case 16: return .bfloat16
        default: return nil
        }
    }

    /// Converts the tensor to float32, row-major in `dims` order.
    public func floatValues() throws -> [Float] {
        let label = "\(file): tensor '\(name)'"
        guard let encoding else {
            throw MNCError("\(label) has data type \(dataTypeName), which cannot be converted to float32")
        }
        let count = try checkedElementCount(dims, label: label)
        func checkCount(_ found: Int, _ field: String) throws {
            guard found == count else {
                throw MNCError("\(label) has \(found) values in \(field), but its shape \(describeShape(dims)) needs \(count)")
            }
        }
        func mismatch(_ field: String) -> MNCError {
            MNCError("\(label) stores its values in \(field), which does not hold data type \(dataTypeName)")
        }
        switch storage {
        case .none:
            try checkCount(0, "its data fields")
            return []
        case .raw(let bytes):
            return try decodeRaw(bytes, encoding: encoding, count: count, label: label, source: "raw_data")
        case .external(let external):
            let (byteCount, overflow) = count.multipliedReportingOverflow(by: encoding.size)
            guard !overflow else {
                throw MNCError("\(label) shape \(describeShape(dims)) has too many elements")
            }
            let bytes = try readExternal(external, byteCount: byteCount, label: label)
            return try decodeRaw(bytes[...], encoding: encoding, count: count, label: label,
                                 source: "external data '\(external.location)'")
        case .floats(let values):
            guard dataType == 1 else { throw mismatch("float_data") }
            try checkCount(values.count, "float_data")
            return values
        case .doubles(let values):
            guard dataType == 11 else { throw mismatch("double_data") }
            try checkCount(values.count, "double_data")
            return values.map { Float($0) }
        case .int32s(let values):
            try checkCount(values.count, "int32_data")
            switch encoding {
            case .float16: return values.map { floatFromHalf(UInt16(truncatingIfNeeded: $0)) }
            case .bfloat16: return values.map { Float(bitPattern: UInt32(UInt16(truncatingIfNeeded: $0)) << 16) }
            case .int8, .uint8, .int16, .uint16, .int32: return values.map { Float($0) }
            default: throw mismatch("int32_data")
            }
        case .int64s(let values):
            guard dataType == 7 else { throw mismatch("int64_data") }
            try checkCount(values.count, "int64_data")
            return values.map { Float($0) }
        case .uint64s(let values):
            guard dataType == 12 || dataType == 13 else { throw mismatch("uint64_data") }
            try checkCount(values.count, "uint64_data")
            return values.map { Float(UInt64(bitPattern: $0)) }
        }
    }

    private func decodeRaw(_ bytes: ArraySlice<UInt8>, encoding: ScalarEncoding, count: Int, label: String,
                           source: String) throws -> [Float] {
        let (needed, overflow) = count.multipliedReportingOverflow(by: encoding.size)
        guard !overflow, bytes.count == needed else {
            throw MNCError("\(label) has \(bytes.count) bytes of \(source), but its shape \(describeShape(dims)) of \(dataTypeName) needs \(overflow ? "more" : String(needed))")
        }
        return decodeNumbers(bytes, as: encoding, count: count).map { Float($0) }
    }

    /// Reads `byteCount` bytes of external data after checking the range against the file size.
    private func readExternal(_ external: ExternalData, byteCount: Int, label: String) throws -> [UInt8] {
        let source = "external data '\(external.location)'"
        let size: Int
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: external.resolvedPath)
            size = (attributes[.size] as? NSNumber)?.intValue ?? 0
        } catch {
            throw MNCError("\(label): cannot read \(source): \(error.localizedDescription)")
        }
        guard external.offset <= size else {
            throw MNCError("\(label): \(source) offset \(external.offset) is past the end of the file (\(size) bytes)")
        }
        let length = external.length ?? (size - external.offset)
        guard length <= size - external.offset else {
            throw MNCError("\(label): \(source) range \(external.offset)+\(length) extends past the end of the file (\(size) bytes)")
        }
        guard length == byteCount else {
            throw MNCError("\(label) has \(length) bytes of \(source), but its shape \(describeShape(dims)) of \(dataTypeName) needs \(byteCount)")
        }
        do {
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: external.resolvedPath))
            defer { try? handle.close() }
            try handle.seek(toOffset: UInt64(external.offset))
            let data = try handle.read(upToCount: length) ?? Data()
            guard data.count == length else {
                throw MNCError("\(label): \(source) ended after \(data.count) of \(length) bytes")
            }
            return [UInt8](data)
        } catch let error as MNCError {
            throw error
        } catch {
            throw MNCError("\(label): cannot read \(source): \(error.localizedDescription)")
        }
    }
}

/// Decodes graph-level messages; `file` is the model path for messages and external data.
struct ONNXParser {
    let bytes: [UInt8]
    let file: String

    func graph(_ message: ProtobufMessage) throws -> ONNXGraph {
        var graph = ONNXGraph()
        try message.forEachField { field, value in
            switch field {
            case 1: graph.nodes.append(try node(try message.message(value, "node[\(graph.nodes.count)]")))
            case 2: graph.name = try message.string(value, "name")
            case 5:
                graph.initializers.append(
                    try tensor(try message.message(value, "initializer[\(graph.initializers.count)]")))
            case 11: graph.inputs.append(try valueInfo(try message.message(value, "input[\(graph.inputs.count)]")))
            case 12: graph.outputs.append(try valueInfo(try message.message(value, "output[\(graph.outputs.count)]")))
            default: break
            }
        }
        return graph
    }

    func node(_ message: ProtobufMessage) throws -> ONNXNode {
        var node = ONNXNode()
        try message.forEachField { field, value in
            switch field {
            case 1: node.inputs.append(try message.string(value, "input"))
            case 2: node.outputs.append(try message.string(value, "output"))
            case 3: node.name = try message.string(value, "name")
            case 4: node.opType = try message.string(value, "op_type")
            case 5:
                node.attributes.append(
                    try attribute(try message.message(value, "attribute[\(node.attributes.count)]")))
            case 7: node.domain = try message.string(value, "domain")
            default: break
            }
        }
        return node
    }

    func attribute(_ message: ProtobufMessage) throws -> ONNXAttribute {
        var attribute = ONNXAttribute()
        try message.forEachField { field, value in
            switch field {
            case 1: attribute.name = try message.string(value, "name")
            case 2: attribute.float = try message.float(value, "f")
            case 3: attribute.int = try message.int64(value, "i")
            case 4: attribute.string = try message.string(value, "s")
            case 5: attribute.tensor = try tensor(try message.message(value, "t"))
            case 6, 11: attribute.graphs.append(try graph(try message.message(value, field == 6 ? "g" : "graphs")))
            case 7: try message.appendFloats(value, "floats", to: &attribute.floats)
            case 8: try message.appendVarints(value, "ints", to: &attribute.ints)
            case 9: attribute.strings.append(try message.string(value, "strings"))
            case 10: attribute.tensors.append(try tensor(try message.message(value, "tensors")))
            case 20: attribute.type = Int(try message.int64(value, "type"))
            default: break
            }
        }
        return attribute
    }

    func valueInfo(_ message: ProtobufMessage) throws -> ONNXValueInfo {
        var info = ONNXValueInfo()
        try message.forEachField { field, value in
            switch field {
            case 1: info.name = try message.string(value, "name")
            case 2:
                let type = try message.message(value, "type")
                try type.forEachField { field, value in
                    guard field == 1 else { return }
                    let tensorType = try type.message(value, "tensor_type")
                    try tensorType.forEachField { field, value in
                        switch field {
                        case 1: info.elementType = Int(try tensorType.int64(value, "elem_type"))
                        case 2: info.dims = try shape(try tensorType.message(value, "shape"))
                        default: break
                        }
                    }
                }
            default: break
            }
        }
        return info
    }

    private func shape(_ message: ProtobufMessage) throws -> [Int64?] {
        var dims: [Int64?] = []
        try message.forEachField { field, value in
            guard field == 1 else { return }
            let dimension = try message.message(value, "dim[\(dims.count)]")
            var size: Int64?
            try dimension.forEachField { field, value in
                if field == 1 { size = try dimension.int64(value, "dim_value") }
            }
            dims.append(size)
        }
        return dims
    }

    func tensor(_ message: ProtobufMessage) throws -> ONNXTensor {
        var name = ""
        var dataType = 0
        var dims: [Int64] = []
        var floats: [Float] = []
        var doubles: [Double] = []
        var int32s: [Int64] = []
        var int64s: [Int64] = []
        var uint64s: [Int64] = []
        var raw: Range<Int>?
        var external: [String: String] = [:]
        var dataLocation: Int64 = 0
        try message.forEachField { field, value in
            switch field {
            case 1: try message.appendVarints(value, "dims", to: &dims)
            case 2: dataType = Int(try message.int64(value, "data_type"))
            case 4: try message.appendFloats(value, "float_data", to: &floats)
            case 5: try message.appendVarints(value, "int32_data", to: &int32s)
            case 7: try message.appendVarints(value, "int64_data", to: &int64s)
            case 8: name = try message.string(value, "name")
            case 9: raw = try message.byteRange(value, "raw_data")
            case 10: try message.appendDoubles(value, "double_data", to: &doubles)
            case 11: try message.appendVarints(value, "uint64_data", to: &uint64s)
            case 13:
                let entry = try message.message(value, "external_data[\(external.count)]")
                var key = "", text = ""
                try entry.forEachField { field, value in
                    switch field {
                    case 1: key = try entry.string(value, "key")
                    case 2: text = try entry.string(value, "value")
                    default: break
                    }
                }
                external[key] = text
            case 14: dataLocation = try message.int64(value, "data_location")
            default: break
            }
        }
        let label = "\(file): tensor '\(name)'"
        guard dims.allSatisfy({ $0 >= 0 && $0 <= Int64(Int32.max) }) else {
            throw MNCError("\(label) has an invalid dimension in \(dims)")
        }

        let storage: ONNXTensor.Storage
        if dataLocation == 1 {
            storage = .external(try resolveExternal(external, label: label))
        } else if let raw {
            storage = .raw(bytes[raw])
        } else if !floats.isEmpty {
            storage = .floats(floats)
        } else if !doubles.isEmpty {
            storage = .doubles(doubles)
        } else if !int32s.isEmpty {
            storage = .int32s(int32s)
        } else if !int64s.isEmpty {
            storage = .int64s(int64s)
        } else if !uint64s.isEmpty {
            storage = .uint64s(uint64s)
        } else {
            storage = .none
        }
        return ONNXTensor(name: name, dataType: dataType, dims: dims.map { Int($0) }, storage: storage, file: file)
    }

    /// Validates the `location`, `offset` and `length` entries of external data. The location
    /// must be a relative path that stays inside the model file's directory after `..` and
    /// symbolic links are resolved.
    private func resolveExternal(_ entries: [String: String], label: String) throws -> ONNXTensor.ExternalData {
        guard let location = entries["location"], !location.isEmpty else {
            throw MNCError("\(label) has external data without a location")
        }
        guard !location.hasPrefix("/") else {
            throw MNCError("\(label): external data location '\(location)' is an absolute path; it must be relative to the model's directory")
        }
        let directory = URL(fileURLWithPath: file).deletingLastPathComponent().standardizedFileURL.resolvingSymlinksInPath()
        let target = directory.appendingPathComponent(location).standardizedFileURL.resolvingSymlinksInPath()
        let prefix = directory.path.hasSuffix("/") ? directory.path : directory.path + "/"
        guard target.path.hasPrefix(prefix) else {
            throw MNCError("\(label): external data location '\(location)' is outside the model's directory \(directory.path)")
        }
        func number(_ key: String) throws -> Int? {
            guard let text = entries[key] else { return nil }
            guard let value = Int(text), value >= 0 else {
                throw MNCError("\(label): external data \(key) '\(text)' is not a non-negative integer")
            }
            return value
        }
        return ONNXTensor.ExternalData(location: location, resolvedPath: target.path,
                                       offset: try number("offset") ?? 0, length: try number("length"))
    }
}

extension ONNXGraph {
    /// Returns the constant tensor behind each value name: initializers, `Constant` node
    /// outputs, and either one passed through `Identity` nodes, which exporters use to alias
    /// shared weights. `file` is the model path that error messages about these tensors name.
    func constantTensors(file: String) -> [String: ONNXTensor] {
        var constants: [String: ONNXTensor] = [:]
        for tensor in initializers {
            constants[tensor.name] = tensor
        }
        for node in nodes where node.domain.isEmpty || node.domain == "ai.onnx" {
            guard let output = node.outputs.first else { continue }
            switch node.opType {
            case "Identity":
                if let input = node.inputs.first, let tensor = constants[input] {
                    constants[output] = tensor
                }
            case "Constant":
                if let tensor = constantValue(of: node, output: output, file: file) {
                    constants[output] = tensor
                }
            default:
                break
            }
        }
        return constants
    }

    /// Returns the value of a `Constant` node from its `value`, `value_float(s)` or `value_int(s)` attribute.
    private func constantValue(of node: ONNXNode, output: String, file: String) -> ONNXTensor? {
        guard let attribute = node.attributes.first else { return nil }
        switch attribute.name {
        case "value":
            guard var tensor = attribute.tensor else { return nil }
            tensor.name = output
            return tensor
        case "value_float":
            return ONNXTensor(name: output, dataType: 1, dims: [], storage: .floats([attribute.float]), file: file)
        case "value_floats":
            return ONNXTensor(name: output, dataType: 1, dims: [attribute.floats.count],
                              storage: .floats(attribute.floats), file: file)
        case "value_int":
            return ONNXTensor(name: output, dataType: 7, dims: [], storage: .int64s([attribute.int]), file: file)
        case "value_ints":
            return ONNXTensor(name: output, dataType: 7, dims: [attribute.ints.count],
                              storage: .int64s(attribute.ints), file: file)
        default:
            return nil
        }
    }
}

extension ONNXModel {
    /// Returns the Conv, Gemm and MatMul (with a constant weight) nodes in graph order, with
    /// weights in the graph's layout. Conv weights are already `[O, I / group, kh, kw]`. Gemm and
    /// MatMul weights become `[out, in]`, scaled by Gemm's `alpha`, and the bias by `beta`.
    /// A BatchNormalization that is a Conv's only reader, and an Add of a constant after MatMul,
    /// belong to the layer.
    func weightedLayers(file: String) throws -> [FileLayer] {
        let extractor = ONNXLayerExtractor(graph: graph, file: file)
        var layers: [FileLayer] = []
        for (index, node) in graph.nodes.enumerated() where node.domain.isEmpty || node.domain == "ai.onnx" {
            switch node.opType {
            case "Conv":
                layers.append(try extractor.convolution(index))
            case "Gemm":
                layers.append(try extractor.gemm(index))
            case "MatMul":
                if let layer = try extractor.matMul(index) {
                    layers.append(layer)
                }
            default:
                continue
            }
        }
        return layers
    }
}

/// Reads the layers of `weightedLayers` from an ONNX graph.
private struct ONNXLayerExtractor {
    let graph: ONNXGraph
    let file: String
    let constants: [String: ONNXTensor]
    /// The nodes that read each value name.
    let readers: [String: [Int]]
    let graphOutputs: Set<String>

    init(graph: ONNXGraph, file: String) {
        self.graph = graph
        self.file = file
        constants = graph.constantTensors(file: file)
        var readers: [String: [Int]] = [:]
        for (index, node) in graph.nodes.enumerated() {
            for input in Set(node.inputs) where !input.isEmpty {
                readers[input, default: []].append(index)
            }
        }
        self.readers = readers
        graphOutputs = Set(graph.outputs.map(\.name))
    }

    func label(_ index: Int) -> String {
        let node = graph.nodes[index]
        return node.name.isEmpty ? "node \(index) (\(node.opType))" : "node \(index) (\(node.opType) \(node.name))"
    }

    /// Returns the node that alone reads `value`, or nil when several do or `value` is a graph output.
    func soleReader(_ value: String) -> Int? {
        guard !graphOutputs.contains(value), let list = readers[value], list.count == 1 else { return nil }
        return list[0]
    }

    /// Returns the constant tensor that input `slot` of node `index` reads, or nil when the input
    /// is omitted. Throws when the input is not a constant.
    func constantInput(_ index: Int, _ slot: Int, _ role: String) throws -> ONNXTensor? {
        let node = graph.nodes[index]
        guard slot < node.inputs.count, !node.inputs[slot].isEmpty else { return nil }
        guard let tensor = constants[node.inputs[slot]] else {
            throw MNCError("\(file): \(label(index)) reads its \(role) from '\(node.inputs[slot])', which is not an initializer or constant")
        }
        return tensor
    }

    func ints(_ node: ONNXNode, _ name: String, default value: [Int], count: Int, label: String) throws -> [Int] {
        guard let attribute = node.attribute(name) else { return value }
        guard attribute.ints.count == count,
              attribute.ints.allSatisfy({ $0 >= Int64(Int32.min) && $0 <= Int64(Int32.max) }) else {
            throw MNCError("\(file): \(label) has \(name) \(attribute.ints), expected \(count) values")
        }
        return attribute.ints.map { Int($0) }
    }

    func convolution(_ index: Int) throws -> FileLayer {
        let node = graph.nodes[index]
        let label = label(index)
        guard let weightTensor = try constantInput(index, 1, "weight") else {
            throw MNCError("\(file): \(label) has no weight input")
        }
        let dims = weightTensor.dims
        guard dims.count == 4, dims.allSatisfy({ $0 > 0 }) else {
            throw MNCError("\(file): \(label) has a weight of shape \(describeShape(dims)); a 2-D convolution needs 4 positive dimensions")
        }
        let group = Int(node.attribute("group")?.int ?? 1)
        guard group >= 1, group <= dims[0], dims[0] % group == 0 else {
            throw MNCError("\(file): \(label) has group \(group), which does not divide its \(dims[0]) output channels")
        }
        let kernel = try ints(node, "kernel_shape", default: [dims[2], dims[3]], count: 2, label: label)
        guard kernel == [dims[2], dims[3]] else {
            throw MNCError("\(file): \(label) has kernel_shape \(kernel), but its weight has shape \(describeShape(dims))")
        }
        let strides = try ints(node, "strides", default: [1, 1], count: 2, label: label)
        let dilations = try ints(node, "dilations", default: [1, 1], count: 2, label: label)
        let pads = try ints(node, "pads", default: [0, 0, 0, 0], count: 4, label: label)
        guard pads.allSatisfy({ $0 >= 0 }) else {
            throw MNCError("\(file): \(label) has negative pads \(pads)")
        }

        var layer = FileLayer(kind: group > 1 && dims[1] == 1 ? .depthwise : .convolution, label: label,
                              inChannels: dims[1] * group, outChannels: dims[0],
                              weight: try weightTensor.floatValues())
        layer.groups = group
        (layer.kernelHeight, layer.kernelWidth) = (dims[2], dims[3])
        (layer.strideHeight, layer.strideWidth) = (strides[0], strides[1])
        (layer.dilationHeight, layer.dilationWidth) = (dilations[0], dilations[1])
        // ONNX pads are [x1_begin, x2_begin, x1_end, x2_end], i.e. top, left, bottom, right.
        switch node.attribute("auto_pad")?.string ?? "NOTSET" {
        case "NOTSET", "": layer.padding = .explicit(Padding(top: pads[0], left: pads[1], bottom: pads[2], right: pads[3]))
        case "VALID": layer.padding = .valid
        case "SAME_UPPER": layer.padding = .same(extraBefore: false)
        case "SAME_LOWER": layer.padding = .same(extraBefore: true)
        case let other: throw MNCError("\(file): \(label) has unknown auto_pad '\(other)'")
        }
        try layer.checkSteps(file: file)
        layer.bias = try bias(index, slot: 2, count: layer.outChannels, label: label)

        var last = node.outputs.first ?? ""
        if let reader = soleReader(last), graph.nodes[reader].opType == "BatchNormalization" {
            layer.batchNorm = try batchNorm(reader, channels: layer.outChannels)
            last = graph.nodes[reader].outputs.first ?? ""
        }
        layer.activation = try activation(after: last)
        return layer
    }

    func bias(_ index: Int, slot: Int, count: Int, label: String, scale: Float = 1) throws -> [Float]? {
        guard let tensor = try constantInput(index, slot, "bias") else { return nil }
        let values = try tensor.floatValues()
        guard values.count == count else {
            throw MNCError("\(file): \(label) has \(values.count) bias values for \(count) outputs")
        }
        return scale == 1 ? values : values.map { $0 * scale }
    }

    func batchNorm(_ index: Int, channels: Int) throws -> FileBatchNorm {
        let label = label(index)
        var vectors: [[Float]] = []
        for (slot, role) in [(1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")] {
            guard let tensor = try constantInput(index, slot, role) else {
                throw MNCError("\(file): \(label) has no \(role) input")
            }
            let values = try tensor.floatValues()
            guard values.count == channels else {
                throw MNCError("\(file): \(label) has \(values.count) values in \(role) for \(channels) channels")
            }
            vectors.append(values)
        }
        let epsilon = graph.nodes[index].attribute("epsilon")?.float ?? 1e-5
        return FileBatchNorm(label: label, scale: vectors[0], bias: vectors[1], mean: vectors[2],
                             variance: vectors[3], epsilon: epsilon)
    }

    func gemm(_ index: Int) throws -> FileLayer {
        let node = graph.nodes[index]
        let label = label(index)
        guard (node.attribute("transA")?.int ?? 0) == 0 else {
            throw MNCError("\(file): \(label) has transA=1; a linear layer needs the input untransposed")
        }
        guard let weightTensor = try constantInput(index, 1, "weight") else {
            throw MNCError("\(file): \(label) has no weight input")
        }
        let transposed = (node.attribute("transB")?.int ?? 0) != 0
        let alpha = node.attribute("alpha")?.float ?? 1
        let beta = node.attribute("beta")?.float ?? 1
        var layer = try linear(weightTensor, transposed: transposed, scale: alpha, label: label)
        layer.bias = try bias(index, slot: 2, count: layer.outChannels, label: label, scale: beta)
        layer.activation = try activation(after: node.outputs.first ?? "")
        return layer
    }

    /// Returns a MatMul by a constant `[in, out]` matrix as a fully-connected layer, or nil when
    /// the second operand is not constant. An Add of a constant that alone reads the product
    /// supplies the bias.
    func matMul(_ index: Int) throws -> FileLayer? {
        let node = graph.nodes[index]
        guard node.inputs.count == 2, let weightTensor = constants[node.inputs[1]] else { return nil }
        let label = label(index)
        var layer = try linear(weightTensor, transposed: false, scale: 1, label: label)
        var last = node.outputs.first ?? ""
        if let reader = soleReader(last), graph.nodes[reader].opType == "Add" {
            let add = graph.nodes[reader]
            let other = add.inputs.first { $0 != last } ?? ""
            if let biasTensor = constants[other] {
                let values = try biasTensor.floatValues()
                guard values.count == layer.outChannels else {
                    throw MNCError("\(file): \(self.label(reader)) adds \(values.count) values to the \(layer.outChannels) outputs of \(label)")
                }
                layer.bias = values
                last = add.outputs.first ?? ""
            }
        }
        layer.activation = try activation(after: last)
        return layer
    }

    /// Returns a fully-connected layer from a 2-D weight, `[out, in]` when `transposed`, else `[in, out]`.
    func linear(_ tensor: ONNXTensor, transposed: Bool, scale: Float, label: String) throws -> FileLayer {
        let dims = tensor.dims
        guard dims.count == 2, dims.allSatisfy({ $0 > 0 }) else {
            throw MNCError("\(file): \(label) has a weight of shape \(describeShape(dims)), expected 2 positive dimensions")
        }
        let values = try tensor.floatValues()
        let (outputs, inputs) = transposed ? (dims[0], dims[1]) : (dims[1], dims[0])
        var weight = values
        if !transposed {
            for o in 0..<outputs {
                for i in 0..<inputs {
                    weight[o * inputs + i] = values[i * outputs + o]
                }
            }
        }
        if scale != 1 {
            weight = weight.map { $0 * scale }
        }
        return FileLayer(kind: .fullyConnected, label: label, inChannels: inputs, outChannels: outputs, weight: weight)
    }

    /// Returns the activation of the node that alone reads `value`, or identity when that node
    /// is not an activation.
    func activation(after value: String) throws -> FileActivation {
        guard let index = soleReader(value) else { return .identity }
        let node = graph.nodes[index]
        switch node.opType {
        case "Relu":
            return FileActivation(.relu)
        case "HardSwish":
            return FileActivation(.hardswish)
        case "Clip":
            let (low, high) = try clipBounds(index)
            if low == 0 && high == 6 { return FileActivation(.relu6) }
            if low == 0 && high == .infinity { return FileActivation(.relu) }
            return FileActivation(activation: nil, name: "Clip(\(low), \(high))")
        case "HardSigmoid":
            let alpha = node.attribute("alpha")?.float ?? 0.2
            let beta = node.attribute("beta")?.float ?? 0.5
            if abs(alpha - 1.0 / 6.0) < 1e-6 && abs(beta - 0.5) < 1e-6 { return FileActivation(.hardsigmoid) }
            if abs(alpha - 0.2) < 1e-6 && abs(beta - 0.5) < 1e-6 { return FileActivation(.hardsigmoidLinear) }
            return FileActivation(activation: nil, name: "HardSigmoid(alpha \(alpha), beta \(beta))")
        case "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "PRelu", "Gelu",
             "Mish", "ThresholdedRelu":
            return FileActivation(activation: nil, name: node.opType)
        default:
            return .identity
        }
    }

    /// Clip's bounds: inputs 1 and 2 since opset 11, the `min` and `max` attributes before.
    func clipBounds(_ index: Int) throws -> (Float, Float) {
        let node = graph.nodes[index]
        var low = node.attribute("min")?.float ?? -.infinity
        var high = node.attribute("max")?.float ?? .infinity
        for (slot, role) in [(1, "min"), (2, "max")] {
            guard let tensor = try constantInput(index, slot, role) else { continue }
            let values = try tensor.floatValues()
            guard values.count == 1 else {
                throw MNCError("\(file): \(label(index)) has \(values.count) values for \(role), expected 1")
            }
            if slot == 1 { low = values[0] } else { high = values[0] }
        }
        return (low, high)
    }
}

/// Lists an ONNX model for `mnc inspect`: header, graph inputs and outputs, initializers
/// (name, data type, shape) and nodes with their attributes.
public func describeONNX(_ model: ONNXModel) -> String {
    var lines: [String] = []
    let opsets = model.opsetImports.map { "\($0.domain.isEmpty ? "ai.onnx" : $0.domain) \($0.version)" }
    lines.append("\(model.path): ONNX model, IR version \(model.irVersion), opset \(opsets.joined(separator: ", "))")
    if !model.producerName.isEmpty {
        lines.append("producer: \(model.producerName) \(model.producerVersion)")
    }
    let graph = model.graph
    func describe(_ info: ONNXValueInfo) -> String {
        let dims = info.dims.map { $0.map(String.init) ?? "?" }.joined(separator: "x")
        let type = ONNXTensor.dataTypeNames[info.elementType] ?? "type \(info.elementType)"
        return "  \(info.name): \(type) \(dims.isEmpty ? "scalar" : dims)"
    }
    lines.append("inputs:")
    lines += graph.inputs.map(describe)
    lines.append("outputs:")
    lines += graph.outputs.map(describe)

    lines.append("initializers (\(graph.initializers.count)):")
    for tensor in graph.initializers {
        let external = tensor.isExternal ? " (external)" : ""
        lines.append("  \(tensor.name): \(tensor.dataTypeName) \(describeShape(tensor.dims))\(external)")
    }

    lines.append("nodes (\(graph.nodes.count)):")
    for (index, node) in graph.nodes.enumerated() {
        let domain = node.domain.isEmpty ? "" : "\(node.domain)."
        var line = "  \(index) \(domain)\(node.opType)"
        if !node.name.isEmpty { line += " \(node.name)" }
        line += ": (\(node.inputs.joined(separator: ", "))) -> (\(node.outputs.joined(separator: ", ")))"
        if !node.attributes.isEmpty {
            line += " " + node.attributes.map { "\($0.name)=\($0.valueDescription)" }.joined(separator: " ")
        }
        lines.append(line)
    }
    return lines.joined(separator: "\n") + "\n"
}
