/// Fuses a residual add into the epilogue of the convolution that produces one of its operands.
///
///     %5 = conv1x1 + bn(%4)
///     %6 = add(%1, %5)
/// ->
///     %5 = conv1x1 + bn + add(%4, %1)   {residual}
///
/// The convolution (the block's projection) must have no other reader and no residual yet; the
/// other operand becomes its second input and is added after the conv's activation.
public let fuseResidualAddPass = Pass(name: "fuse-residual-add",
                                      summary: "fuse residual adds into the projecting convolution's epilogue",
                                      run: fuseResidualAdd)

func fuseResidualAdd(_ graph: Graph) throws -> Graph {
    var editor = GraphEditor(graph)
    for index in graph.nodes.indices {
        let node = editor.graph.nodes[index]
        guard node.op == .add else { continue }
        // Prefer the later operand: the projection is computed after the block's input.
        for (operand, other) in [(node.inputs[1], node.inputs[0]), (node.inputs[0], node.inputs[1])] {
            guard case .conv2d(var conv) = editor.graph.nodes[operand].op, !conv.hasResidual,
                  operand != other, editor.hasSingleUser(operand) else { continue }
            conv.hasResidual = true
            editor.graph.nodes[operand].op = .conv2d(conv)
            editor.graph.nodes[operand].inputs.append(other)
            editor.graph.nodes[operand].fusedOps += node.fusedOps
            editor.replaceUses(of: index, with: operand)
            editor.remove(index)
            break
        }
    }
    return editor.finish()
}
