/// Binds deterministic pseudo-random values to every parameter of a graph, for compiling and
/// testing without a trained model. Convolution and linear weights are scaled by
/// `1 / sqrt(fan_in)` so activations keep their magnitude through the network; BatchNorm gets
/// weights near 1, small biases and means, and variances in [0.5, 1.5].
public func bindRandomWeights(to graph: Graph, seed: UInt64 = 1) -> Graph {
    var generator = SplitMix64(state: seed)
    var bound = graph
    for node in graph.nodes {
        for parameter in node.parameters where bound.constants[parameter.key] == nil {
            let count = parameter.elementCount
            let fanIn = parameter.shape.count > 1 ? parameter.shape.dropFirst().reduce(1, *) : 1
            let data: [Float]
            switch parameter.role {
            case "running_var":
                data = (0..<count).map { _ in 0.5 + generator.nextUnit() }
            case "weight" where parameter.shape.count == 1:
                data = (0..<count).map { _ in 0.75 + 0.5 * generator.nextUnit() }
            case "bias", "running_mean", "fc1.bias", "fc2.bias":
                data = (0..<count).map { _ in 0.2 * (generator.nextUnit() - 0.5) }
            default:
                let scale = Float(2 / Double(fanIn).squareRoot())
                data = (0..<count).map { _ in scale * (generator.nextUnit() - 0.5) }
            }
            bound.constants[parameter.key] = Tensor(shape: parameter.shape, data: data)
        }
    }
    return bound
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64), so random weights and
/// test inputs are the same on every machine.
public struct SplitMix64 {
    public var state: UInt64

    public init(state: UInt64) {
        self.state = state
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform value in [0, 1).
    public mutating func nextUnit() -> Float {
        Float(next() >> 40) / Float(1 << 24)
    }
}
