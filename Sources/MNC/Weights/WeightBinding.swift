import Foundation

/// Loads a weights file in any supported format and binds it to `graph`.
///
/// State-dict files (safetensors, PyTorch `.pth`) bind by torchvision key name; model files
/// (TFLite, ONNX) bind their operators to the graph's layers in order.
public func bindWeights(path: String, to graph: Graph) throws -> Graph {
    switch try detectWeightFormat(path: path) {
    case .stateDict:
        return try bindStateDict(loadWeightFile(path: path), to: graph)
    case .tflite:
        return try bindTFLite(TFLiteModel.load(path: path), to: graph, file: path)
    case .onnx:
        return try bindONNX(ONNXModel.load(path: path), to: graph, file: path)
    }
}

enum WeightFormat {
    case stateDict
    case tflite
    case onnx
}

/// Identifies a weights file by its first bytes, and by its `.onnx` extension, since a protobuf
/// has no magic number.
func detectWeightFormat(path: String) throws -> WeightFormat {
    guard let handle = FileHandle(forReadingAtPath: path) else {
        throw MNCError("cannot read weights '\(path)': file not found or not readable")
    }
    defer { try? handle.close() }
    let head = [UInt8]((try? handle.read(upToCount: 9)) ?? Data())
    let lowercased = path.lowercased()
    if head.count >= 8 && Array(head[4..<8]) == Array("TFL3".utf8) {
        return .tflite
    }
    if lowercased.hasSuffix(".onnx") {
        return .onnx
    }
    // A zip archive (PyTorch .pth), or safetensors: an 8-byte header length, then '{'.
    if head.starts(with: [0x50, 0x4B]) || (head.count == 9 && head[8] == UInt8(ascii: "{")) {
        return .stateDict
    }
    let expected = "expected safetensors, a PyTorch .pth (zip archive), TFLite or ONNX (.onnx)"
    if lowercased.hasSuffix(".pth") || lowercased.hasSuffix(".pt") {
        throw MNCError("\(path) is not a PyTorch checkpoint: it does not start with a zip archive header, as files written by torch.save do")
    }
    if lowercased.hasSuffix(".tflite") {
        throw MNCError("\(path) is not a TFLite model: it has no 'TFL3' identifier at offset 4")
    }
    throw MNCError("\(path) is not a recognized weights file: \(expected)")
}

/// Rejects a bound weight that is infinite or NaN, naming the tensor and the index. Multiplied by
/// zero, such a weight gives NaN, but the generated code skips the terms of input channels that
/// are zero, so its outputs could stay finite where PyTorch's are NaN.
func checkFiniteConstants(_ graph: Graph, file: String) throws {
    for node in graph.nodes {
        for parameter in node.parameters {
            guard let values = graph.constants[parameter.key]?.data,
                  let index = values.firstIndex(where: { !$0.isFinite }) else { continue }
            throw MNCError("\(file): tensor '\(parameter.key)' has a non-finite value (\(values[index])) at index \(index): expected finite float32 weights")
        }
    }
}
