/// Removes ops that compute nothing at inference: dropout, and flatten where the reader accepts
/// the unflattened value.
///
///     %7 = dropout(%6) : 1280
///     %8 = linear(%7)
/// ->
///     %8 = linear(%6)
///
/// A flatten that is the graph output stays, so the output keeps its `[1, classes]` shape; a
/// flatten before a linear layer goes, since linear reads `[1, C, 1, 1]` and `[1, C]` alike.
public let removeIdentityPass = Pass(name: "remove-identity",
                                     summary: "remove dropout and flatten, which are identities at inference",
                                     run: removeIdentity)

func removeIdentity(_ graph: Graph) throws -> Graph {
    var editor = GraphEditor(graph)
    for index in graph.nodes.indices {
        let node = editor.graph.nodes[index]
        switch node.op {
        case .dropout:
            if graph.output == index, editor.graph.nodes[node.inputs[0]].shape != node.shape { continue }
        case .flatten:
            guard graph.output != index,
                  editor.users(of: index).allSatisfy({ editor.graph.nodes[$0].op.isLinear }) else { continue }
        default:
            continue
        }
        editor.replaceUses(of: index, with: node.inputs[0])
        editor.remove(index)
    }
    return editor.finish()
}

extension Op {
    var isLinear: Bool {
        if case .linear = self { return true }
        return false
    }
}
