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
    // Dropout first, so a flatten that feeds a dropout then a linear layer sees the linear reader.
    for index in graph.nodes.indices {
        let node = editor.graph.nodes[index]
        guard case .dropout = node.op else { continue }
        if editor.graph.output == index, editor.graph.nodes[node.inputs[0]].shape != node.shape { continue }
        editor.replaceUses(of: index, with: node.inputs[0])
        editor.remove(index)
    }
    for index in graph.nodes.indices {
        let node = editor.graph.nodes[index]
        guard node.op == .flatten, editor.graph.output != index,
              editor.users(of: index).allSatisfy({ editor.graph.nodes[$0].op.isLinear }) else { continue }
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
