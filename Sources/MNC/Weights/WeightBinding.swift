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
    let head = (try? handle.read(upToCount: 8)) ?? Data()
    if head.count >= 8 && head[4..<8] == Data("TFL3".utf8) {
        return .tflite
    }
    if path.lowercased().hasSuffix(".onnx") {
        return .onnx
    }
    return .stateDict
}
