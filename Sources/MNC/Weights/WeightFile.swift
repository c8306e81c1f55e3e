/// One tensor read from a weights file, converted to float32.
public struct WeightTensor {
    /// The key in the file, e.g. `features.1.conv.0.0.weight`.
    public var name: String
    /// The element type as stored in the file (`F32`, `F16`, `BF16`, `uint8`, ...).
    public var dtype: String
    public var shape: [Int]
    /// Row-major values, `shape.reduce(1, *)` of them.
    public var data: [Float]

    public init(name: String, dtype: String, shape: [Int], data: [Float]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }
}

/// The named tensors of a state-dict style weights file (safetensors, PyTorch `.pth`), in file order.
public struct WeightFile {
    public var path: String
    /// `safetensors` or `pytorch`.
    public var format: String
    public var tensors: [WeightTensor]

    public init(path: String, format: String, tensors: [WeightTensor]) {
        self.path = path
        self.format = format
        self.tensors = tensors
    }
}
