/// Fuses an activation into the convolution or linear layer that produces its input.
///
///     %1 = conv1x1 + bn(%0)
///     %2 = relu6(%1)
/// ->
///     %1 = conv1x1 + bn + relu6(%0)   {act relu6}
///
/// The producer must have no other reader, no activation yet and no fused residual (the
/// residual is added after the activation, so an activation after the add cannot move in).
public let fuseActivationPass = Pass(name: "fuse-activation",
                                     summary: "fuse ReLU, ReLU6, hardswish and hardsigmoid into their producer",
                                     run: fuseActivation)

func fuseActivation(_ graph: Graph) throws -> Graph {
    var editor = GraphEditor(graph)
    for index in graph.nodes.indices {
        let node = editor.graph.nodes[index]
        guard case .activation(let kind) = node.op else { continue }
        let producer = node.inputs[0]
        guard editor.hasSingleUser(producer) else { continue }
        var producerNode = editor.graph.nodes[producer]
        switch producerNode.op {
        case .conv2d(var conv) where conv.activation == .identity && !conv.hasResidual:
            conv.activation = kind
            producerNode.op = .conv2d(conv)
        case .linear(var linear) where linear.activation == .identity:
            linear.activation = kind
            producerNode.op = .linear(linear)
        default:
            continue
        }
        producerNode.fusedOps += node.fusedOps
        editor.graph.nodes[producer] = producerNode
        editor.replaceUses(of: index, with: producer)
        editor.remove(index)
    }
    return editor.finish()
}
