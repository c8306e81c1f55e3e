/// The reference interpreter: executes a graph with bound constants node by node, in float32
/// storage with double-precision accumulation, using direct loops and NCHW layout.
///
/// It is the oracle for every optimization pass and backend, so it favours plain code over
/// speed. It runs both unfused graphs (conv, batchNorm, activation nodes) and fused ones
/// (conv with activation and residual epilogues, squeeze-excite).
public struct Interpreter {
    public let graph: Graph

    public init(graph: Graph) throws {
        guard !graph.constants.isEmpty || graph.nodes.allSatisfy({ $0.parameters.isEmpty }) else {
            throw MNCError("the graph has no weights bound: pass --weights FILE")
        }
        try verify(graph)
        // Read packed convolution weights back in PyTorch's order, so the loops below see one layout.
        var unpacked = graph
        for node in graph.nodes {
            let convolutions: [(role: String, conv: Conv2D)]
            switch node.op {
            case .conv2d(let conv): convolutions = [("weight", conv)]
            case .fusedBlock(let block): convolutions = block.stages.map { ("\($0.prefix).weight", $0.conv) }
            default: convolutions = []
            }
            for (role, conv) in convolutions {
                guard let weight = node.parameter(role), weight.layout != .pytorch, let tensor = graph.constants[weight.key] else { continue }
                unpacked.constants[weight.key] = Tensor(
                    shape: tensor.shape, data: packConvolutionWeight(tensor.data, conv: conv, layout: weight.layout, unpack: true))
            }
        }
        self.graph = unpacked
    }

    /// Runs the network on one input in NCHW layout and returns the output values (the logits).
    public func run(input: [Float]) throws -> [Float] {
        let expected = graph.nodes[0].elementCount
        guard input.count == expected else {
            throw MNCError("input has \(input.count) values, the network expects \(expected) (\(formatShape(graph.inputShape)))")
        }
        var values = [[Float]](repeating: [], count: graph.nodes.count)
        var remainingUses = [Int](repeating: 0, count: graph.nodes.count)
        for node in graph.nodes {
            for input in node.inputs { remainingUses[input] += 1 }
        }
        values[0] = input

        for index in 1..<graph.nodes.count {
            let node = graph.nodes[index]
            let inputs = node.inputs.map { values[$0] }
            values[index] = evaluate(node, inputs: inputs)
            // Free values once their last reader has run.
            for input in node.inputs {
                remainingUses[input] -= 1
                if remainingUses[input] == 0 && input != graph.output { values[input] = [] }
            }
        }
        return values[graph.output]
    }

    private func constant(_ node: Node, _ role: String) -> [Float]? {
        node.parameter(role).flatMap { graph.constants[$0.key]?.data }
    }

    private func evaluate(_ node: Node, inputs: [[Float]]) -> [Float] {
        switch node.op {
        case .input:
            return inputs[0]
        case .conv2d(let conv):
            return convolve(inputs[0], inputShape: graph.nodes[node.inputs[0]].shape, conv: conv, node: node, prefix: "",
                            outputShape: node.shape, residual: conv.hasResidual ? inputs[1] : nil)
        case .fusedBlock(let block):
            // The stages one after another, each with its whole output, as the unfused ops would run.
            var value = inputs[0], shape = graph.nodes[node.inputs[0]].shape
            for (prefix, conv) in block.stages {
                if prefix == "project", let se = block.squeezeExcite {
                    value = squeezeExcite(value, shape: shape, se: se, node: node, prefix: "se.")
                }
                let height = (shape[2] + conv.padding.top + conv.padding.bottom - conv.kernelHeight) / conv.strideHeight + 1
                let width = (shape[3] + conv.padding.left + conv.padding.right - conv.kernelWidth) / conv.strideWidth + 1
                let outputShape = [1, conv.outChannels, height, width]
                value = convolve(value, inputShape: shape, conv: conv, node: node, prefix: prefix + ".", outputShape: outputShape,
                                 residual: conv.hasResidual ? inputs[1] : nil)
                shape = outputShape
            }
            return value
        case .batchNorm(let epsilon):
            let weight = constant(node, "weight") ?? []
            let bias = constant(node, "bias") ?? []
            let mean = constant(node, "running_mean") ?? []
            let variance = constant(node, "running_var") ?? []
            let channels = node.shape[1]
            let plane = node.elementCount / channels
            var output = inputs[0]
            for c in 0..<channels {
                let scale = Double(weight[c]) / (Double(variance[c]) + Double(epsilon)).squareRoot()
                for i in c * plane..<(c + 1) * plane {
                    output[i] = Float((Double(output[i]) - Double(mean[c])) * scale + Double(bias[c]))
                }
            }
            return output
        case .activation(let kind):
            return inputs[0].map(kind.apply)
        case .add:
            return zip(inputs[0], inputs[1]).map { $0 + $1 }
        case .globalAveragePool:
            return averagePool(inputs[0], shape: graph.nodes[node.inputs[0]].shape)
        case .flatten, .dropout:
            return inputs[0]
        case .linear(let linear):
            let weight = constant(node, "weight") ?? []
            let bias = linear.hasBias ? constant(node, "bias") : nil
            var output = [Float](repeating: 0, count: linear.outFeatures)
            for o in 0..<linear.outFeatures {
                var sum = Double(bias?[o] ?? 0)
                for i in 0..<linear.inFeatures {
                    sum += Double(weight[o * linear.inFeatures + i]) * Double(inputs[0][i])
                }
                output[o] = linear.activation.apply(Float(sum))
            }
            return output
        case .channelScale:
            let plane = node.shape[2] * node.shape[3]
            var output = inputs[0]
            for i in output.indices { output[i] *= inputs[1][i / plane] }
            return output
        case .squeezeExcite(let se):
            return squeezeExcite(inputs[0], shape: graph.nodes[node.inputs[0]].shape, se: se, node: node, prefix: "")
        }
    }

    /// Returns `x * gate(fc2(activation(fc1(mean_hw(x)))))` with the node's parameters
    /// `PREFIXfc1.weight`, `PREFIXfc1.bias`, `PREFIXfc2.weight` and `PREFIXfc2.bias`.
    private func squeezeExcite(_ x: [Float], shape: [Int], se: SqueezeExcite, node: Node, prefix: String) -> [Float] {
        let pooled = averagePool(x, shape: shape)
        let fc1Weight = constant(node, prefix + "fc1.weight") ?? [], fc1Bias = constant(node, prefix + "fc1.bias") ?? []
        let fc2Weight = constant(node, prefix + "fc2.weight") ?? [], fc2Bias = constant(node, prefix + "fc2.bias") ?? []
        var squeezed = [Float](repeating: 0, count: se.squeezeChannels)
        for s in 0..<se.squeezeChannels {
            var sum = Double(fc1Bias[s])
            for c in 0..<se.channels { sum += Double(fc1Weight[s * se.channels + c]) * Double(pooled[c]) }
            squeezed[s] = se.activation.apply(Float(sum))
        }
        var gate = [Float](repeating: 0, count: se.channels)
        for c in 0..<se.channels {
            var sum = Double(fc2Bias[c])
            for s in 0..<se.squeezeChannels { sum += Double(fc2Weight[c * se.squeezeChannels + s]) * Double(squeezed[s]) }
            gate[c] = se.gate.apply(Float(sum))
        }
        let plane = shape[2] * shape[3]
        var output = x
        for i in output.indices { output[i] *= gate[i / plane] }
        return output
    }

    private func averagePool(_ input: [Float], shape: [Int]) -> [Float] {
        let channels = shape[1], plane = shape[2] * shape[3]
        return (0..<channels).map { c in
            var sum = 0.0
            for i in c * plane..<(c + 1) * plane { sum += Double(input[i]) }
            return Float(sum / Double(plane))
        }
    }

    /// Returns `activation(conv(x) + bias) + residual` with the node's parameters `PREFIXweight`
    /// and `PREFIXbias`.
    private func convolve(_ input: [Float], inputShape: [Int], conv: Conv2D, node: Node, prefix: String, outputShape: [Int],
                          residual: [Float]?) -> [Float] {
        var output = convolve(input, inputShape: inputShape, conv: conv, weight: constant(node, prefix + "weight") ?? [],
                              bias: conv.hasBias ? constant(node, prefix + "bias") : nil, outputShape: outputShape)
        for i in output.indices { output[i] = conv.activation.apply(output[i]) }
        if let residual {
            for i in output.indices { output[i] += residual[i] }
        }
        return output
    }

    /// Direct convolution with zero padding; weight layout `[out, in / groups, kh, kw]`.
    private func convolve(_ input: [Float], inputShape: [Int], conv: Conv2D, weight: [Float], bias: [Float]?,
                          outputShape: [Int]) -> [Float] {
        let inHeight = inputShape[2], inWidth = inputShape[3]
        let outHeight = outputShape[2], outWidth = outputShape[3]
        let groupIn = conv.inChannels / conv.groups, groupOut = conv.outChannels / conv.groups
        let kh = conv.kernelHeight, kw = conv.kernelWidth
        var output = [Float](repeating: 0, count: conv.outChannels * outHeight * outWidth)
        input.withUnsafeBufferPointer { x in
            weight.withUnsafeBufferPointer { w in
                output.withUnsafeMutableBufferPointer { y in
                    for o in 0..<conv.outChannels {
                        let group = o / groupOut
                        for oy in 0..<outHeight {
                            for ox in 0..<outWidth {
                                var sum = Double(bias?[o] ?? 0)
                                for i in 0..<groupIn {
                                    let channel = group * groupIn + i
                                    for ky in 0..<kh {
                                        let iy = oy * conv.strideHeight - conv.padding.top + ky
                                        if iy < 0 || iy >= inHeight { continue }
                                        for kx in 0..<kw {
                                            let ix = ox * conv.strideWidth - conv.padding.left + kx
                                            if ix < 0 || ix >= inWidth { continue }
                                            let xv = x[(channel * inHeight + iy) * inWidth + ix]
                                            let wv = w[((o * groupIn + i) * kh + ky) * kw + kx]
                                            sum += Double(xv) * Double(wv)
                                        }
                                    }
                                }
                                y[(o * outHeight + oy) * outWidth + ox] = Float(sum)
                            }
                        }
                    }
                }
            }
        }
        return output
    }
}
