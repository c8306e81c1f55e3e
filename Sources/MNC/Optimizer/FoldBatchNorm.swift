/// Folds an inference BatchNorm into the convolution that produces its input.
///
///     %1 = conv3x3(%0)  [weight]
///     %2 = bn(%1)       [weight γ, bias β, running_mean μ, running_var σ²]
/// ->
///     %1 = conv3x3 + bn(%0)  [weight W·s, bias (b - μ)·s + β],  s = γ / sqrt(σ² + ε) per output channel
///
/// The conv must have no other reader and no fused epilogue yet. The folded bias takes the key
/// `CONV.bias`; a graph without bound constants is rewritten structurally the same way.
public let foldBatchNormPass = Pass(name: "fold-batchnorm",
                                    summary: "fold BatchNorm into the preceding convolution's weights and bias",
                                    run: foldBatchNorm)

func foldBatchNorm(_ graph: Graph) throws -> Graph {
    var editor = GraphEditor(graph)
    for index in graph.nodes.indices {
        let node = editor.graph.nodes[index]
        guard case .batchNorm(let epsilon) = node.op else { continue }
        let producer = node.inputs[0]
        guard case .conv2d(var conv) = editor.graph.nodes[producer].op,
              conv.activation == .identity, !conv.hasResidual,
              editor.hasSingleUser(producer) else { continue }

        var convNode = editor.graph.nodes[producer]
        let biasKey = convNode.parameter("bias")?.key ?? "\(convNode.name).bias"
        if let weightKey = convNode.parameter("weight")?.key, let weight = editor.graph.constants[weightKey] {
            guard let gamma = constant(node, "weight", editor.graph), let beta = constant(node, "bias", editor.graph),
                  let mean = constant(node, "running_mean", editor.graph),
                  let variance = constant(node, "running_var", editor.graph) else {
                throw MNCError("fold-batchnorm: node '\(node.name)' has unbound BatchNorm parameters")
            }
            let oldBias = convNode.parameter("bias").flatMap { editor.graph.constants[$0.key]?.data }
            let perChannel = weight.data.count / conv.outChannels
            var folded = weight.data
            var bias = [Float](repeating: 0, count: conv.outChannels)
            for o in 0..<conv.outChannels {
                let scale = Double(gamma[o]) / (Double(variance[o]) + Double(epsilon)).squareRoot()
                for i in o * perChannel..<(o + 1) * perChannel {
                    folded[i] = Float(Double(folded[i]) * scale)
                }
                bias[o] = Float((Double(oldBias?[o] ?? 0) - Double(mean[o])) * scale + Double(beta[o]))
            }
            // Finite weights and statistics can still overflow float32 here, for a huge weight over
            // a running variance near zero. The kernels need finite weights, as binding checks.
            if let index = folded.firstIndex(where: { !$0.isFinite }) {
                throw MNCError("fold-batchnorm: folding BatchNorm '\(node.name)' into '\(convNode.name)' makes weight '\(weightKey)' non-finite (\(folded[index])) at index \(index): check its running_var and weight")
            }
            if let index = bias.firstIndex(where: { !$0.isFinite }) {
                throw MNCError("fold-batchnorm: folding BatchNorm '\(node.name)' into '\(convNode.name)' makes bias '\(biasKey)' non-finite (\(bias[index])) at index \(index): check its running_var, running_mean and bias")
            }
            editor.graph.constants[weightKey] = Tensor(shape: weight.shape, data: folded)
            editor.graph.constants[biasKey] = Tensor(shape: [conv.outChannels], data: bias)
        }

        if !conv.hasBias {
            conv.hasBias = true
            convNode.parameters.append(Parameter(role: "bias", key: biasKey, shape: [conv.outChannels]))
        }
        convNode.op = .conv2d(conv)
        convNode.fusedOps += node.fusedOps
        editor.graph.nodes[producer] = convNode
        editor.replaceUses(of: index, with: producer)
        editor.remove(index)
    }
    return editor.finish()
}

func constant(_ node: Node, _ role: String, _ graph: Graph) -> [Float]? {
    node.parameter(role).flatMap { graph.constants[$0.key]?.data }
}
