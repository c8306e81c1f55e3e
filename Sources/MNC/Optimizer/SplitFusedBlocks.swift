/// Splits every `fused_block` back into its stages, for a backend that runs a block's
/// convolutions (and squeeze-excitation) one after another on whole tensors.
///
///     %1 = fused_block(%0, %0)              [expand.weight, expand.bias, depthwise.weight, ...]
/// ->
///     %1 = conv1x1 + relu6(%0)              [weight, bias]
///     %2 = depthwise3x3 + relu6(%1)         [weight, bias]
///     %3 = conv1x1 + add(%2, %0)            [weight, bias]
///
/// Parameters keep their keys, shapes and layouts; only the `stage.` prefix of their roles is
/// dropped. The result computes the same values as the fused graph, with the arena of a graph
/// that the fusion never ran on.
public func splitFusedBlocks(_ graph: Graph) -> Graph {
    guard graph.nodes.contains(where: { if case .fusedBlock = $0.op { return true } else { return false } }) else {
        return graph
    }
    var result = graph
    result.nodes = []
    // newIndex[i] is the index, in the split graph, of the node that produces old node i's value.
    var newIndex: [Int] = []
    for node in graph.nodes {
        var copy = node
        copy.inputs = node.inputs.map { newIndex[$0] }
        guard case .fusedBlock(let block) = node.op else {
            result.nodes.append(copy)
            newIndex.append(result.nodes.count - 1)
            continue
        }
        func parameters(_ prefix: String) -> [Parameter] {
            node.parameters.compactMap { parameter in
                guard parameter.role.hasPrefix(prefix + ".") else { return nil }
                var stripped = parameter
                stripped.role = String(parameter.role.dropFirst(prefix.count + 1))
                return stripped
            }
        }
        var value = copy.inputs[0]
        var shape = graph.nodes[node.inputs[0]].shape
        func append(_ op: Op, _ prefix: String, inputs: [Int], outputShape: [Int]) {
            let stage = Node(op: op, inputs: inputs, shape: outputShape, parameters: parameters(prefix),
                             name: "\(node.name).\(prefix)", layer: node.layer)
            result.nodes.append(stage)
            value = result.nodes.count - 1
            shape = outputShape
        }
        for (prefix, conv) in block.stages {
            if prefix == "project", let se = block.squeezeExcite {
                append(.squeezeExcite(se), "se", inputs: [value], outputShape: shape)
            }
            let height = (shape[2] + conv.padding.top + conv.padding.bottom - conv.kernelHeight) / conv.strideHeight + 1
            let width = (shape[3] + conv.padding.left + conv.padding.right - conv.kernelWidth) / conv.strideWidth + 1
            let residual = prefix == "project" ? Array(copy.inputs.dropFirst()) : []
            append(.conv2d(conv), prefix, inputs: [value] + residual, outputShape: [1, conv.outChannels, height, width])
        }
        newIndex.append(value)
    }
    result.output = newIndex[graph.output]
    return result
}
