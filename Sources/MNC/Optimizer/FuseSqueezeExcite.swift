/// Fuses a squeeze-excitation block into one op that backends schedule as a unit.
///
///     %1 = global_avgpool(%0)
///     %2 = conv1x1 + relu(%1)           [fc1.weight, fc1.bias]
///     %3 = conv1x1 + hardsigmoid(%2)    [fc2.weight, fc2.bias]
///     %4 = channel_scale(%0, %3)
/// ->
///     %1 = squeeze_excite(%0)           [fc1.weight, fc1.bias, fc2.weight, fc2.bias]
///
/// Runs after activation fusion: the two 1×1 convolutions must carry their activations, have
/// biases, and have no reader outside the block.
public let fuseSqueezeExcitePass = Pass(name: "fuse-squeeze-excite",
                                        summary: "fuse pool, FC, ReLU, FC, gate and scale into one squeeze_excite op",
                                        run: fuseSqueezeExcite)

func fuseSqueezeExcite(_ graph: Graph) throws -> Graph {
    var editor = GraphEditor(graph)
    for index in graph.nodes.indices {
        let scaleNode = editor.graph.nodes[index]
        guard scaleNode.op == .channelScale else { continue }
        let x = scaleNode.inputs[0], gateIndex = scaleNode.inputs[1]
        let fc2Node = editor.graph.nodes[gateIndex]
        guard case .conv2d(let fc2) = fc2Node.op, fc2.isPointwise, fc2.hasBias, !fc2.hasResidual,
              editor.hasSingleUser(gateIndex) else { continue }
        let fc1Index = fc2Node.inputs[0]
        let fc1Node = editor.graph.nodes[fc1Index]
        guard case .conv2d(let fc1) = fc1Node.op, fc1.isPointwise, fc1.hasBias, !fc1.hasResidual,
              editor.hasSingleUser(fc1Index) else { continue }
        let poolIndex = fc1Node.inputs[0]
        guard editor.graph.nodes[poolIndex].op == .globalAveragePool,
              editor.graph.nodes[poolIndex].inputs == [x], editor.hasSingleUser(poolIndex) else { continue }

        let se = SqueezeExcite(channels: fc1.inChannels, squeezeChannels: fc1.outChannels,
                               activation: fc1.activation, gate: fc2.activation)
        func renamed(_ parameter: Parameter?, _ role: String) -> Parameter? {
            guard var parameter else { return nil }
            parameter.role = role
            return parameter
        }
        let parameters = [
            renamed(fc1Node.parameter("weight"), "fc1.weight"), renamed(fc1Node.parameter("bias"), "fc1.bias"),
            renamed(fc2Node.parameter("weight"), "fc2.weight"), renamed(fc2Node.parameter("bias"), "fc2.bias"),
        ].compactMap { $0 }
        var fused = Node(op: .squeezeExcite(se), inputs: [x], shape: scaleNode.shape, parameters: parameters,
                         name: scaleNode.name.hasSuffix(".scale") ? String(scaleNode.name.dropLast(6)) : scaleNode.name,
                         layer: scaleNode.layer)
        fused.fusedOps = ["squeeze_excite(" + ([editor.graph.nodes[poolIndex]] + [fc1Node, fc2Node, scaleNode])
            .flatMap(\.fusedOps).joined(separator: " + ") + ")"]
        editor.graph.nodes[index] = fused
        for removed in [poolIndex, fc1Index, gateIndex] { editor.remove(removed) }
    }
    return editor.finish()
}
