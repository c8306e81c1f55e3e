/// Fuses an inverted-residual block (expansion, depthwise, projection) into one `fused_block`
/// op, so that a backend can compute it a few rows at a time without storing the expanded
/// tensor whole.
///
///     %1 = conv1x1 + relu6(%0)              [weight, bias]
///     %2 = depthwise3x3 + relu6(%1)         [weight, bias]
///     %3 = conv1x1 + add(%2, %0)            [weight, bias]
/// ->
///     %1 = fused_block(%0, %0)              [expand.weight, expand.bias, depthwise.weight,
///                                            depthwise.bias, project.weight, project.bias]
///
/// The projection is a 1×1 convolution with stride 1 and no padding, whose only input is a
/// depthwise convolution without residual that nothing else reads, or a squeeze-excitation
/// that nothing else reads on such a depthwise convolution (MobileNetV3). The convolution before the
/// depthwise one joins as the expansion when nothing else reads it and it has groups 1 and no
/// residual. It must be either a 1×1 convolution with stride 1 and no padding on a value other
/// than the network input, or a larger kernel: the network's first 3×3 convolution then runs
/// inside the first block. Without an expansion (MobileNetV1, MobileNetV3's first block), the
/// depthwise convolution must not read the network input, which may be in the caller's planar
/// layout. Runs after activation, residual and squeeze-excitation fusion, before
/// weight packing.
public let fuseInvertedResidualPass = Pass(name: "fuse-inverted-residual",
                                           summary: "fuse expansion, depthwise and projection convolutions into one fused_block op",
                                           run: fuseInvertedResidual)

func fuseInvertedResidual(_ graph: Graph) throws -> Graph {
    var editor = GraphEditor(graph)
    let unpadded = Padding(top: 0, left: 0, bottom: 0, right: 0)
    func isPointwiseGEMM(_ conv: Conv2D) -> Bool {
        conv.isPointwise && conv.strideHeight == 1 && conv.strideWidth == 1 && conv.padding == unpadded
    }

    for index in graph.nodes.indices {
        let projectNode = editor.graph.nodes[index]
        guard case .conv2d(let project) = projectNode.op, isPointwiseGEMM(project) else { continue }
        var depthwiseIndex = projectNode.inputs[0]
        var squeeze: (index: Int, node: Node, block: SqueezeExcite)?
        if case .squeezeExcite(let se) = editor.graph.nodes[depthwiseIndex].op, editor.hasSingleUser(depthwiseIndex) {
            squeeze = (depthwiseIndex, editor.graph.nodes[depthwiseIndex], se)
            depthwiseIndex = editor.graph.nodes[depthwiseIndex].inputs[0]
        }
        let depthwiseNode = editor.graph.nodes[depthwiseIndex]
        guard case .conv2d(let depthwise) = depthwiseNode.op, depthwise.isDepthwise, !depthwise.hasResidual,
              editor.hasSingleUser(depthwiseIndex) else { continue }

        var x = depthwiseNode.inputs[0]
        var expand: (index: Int, node: Node, conv: Conv2D)?
        if case .conv2d(let candidate) = editor.graph.nodes[x].op, candidate.groups == 1, !candidate.hasResidual,
           editor.hasSingleUser(x) {
            let reader = editor.graph.nodes[x].inputs[0]
            if !candidate.isPointwise || (isPointwiseGEMM(candidate) && reader != 0) {
                expand = (x, editor.graph.nodes[x], candidate)
                x = reader
            }
        }
        if expand == nil && x == 0 { continue }

        let expandedShape = editor.graph.nodes[depthwiseNode.inputs[0]].shape
        let block = FusedBlock(expand: expand?.conv, depthwise: depthwise, squeezeExcite: squeeze?.block, project: project,
                               expandedHeight: expandedShape[2], expandedWidth: expandedShape[3])
        func renamed(_ node: Node, _ prefix: String) -> [Parameter] {
            node.parameters.map { parameter in
                var parameter = parameter
                parameter.role = "\(prefix).\(parameter.role)"
                return parameter
            }
        }
        let sources = (expand.map { [($0.node, "expand")] } ?? []) + [(depthwiseNode, "depthwise")]
            + (squeeze.map { [($0.node, "se")] } ?? []) + [(projectNode, "project")]
        var fused = Node(op: .fusedBlock(block), inputs: [x] + projectNode.inputs.dropFirst(), shape: projectNode.shape,
                         parameters: sources.flatMap { renamed($0.0, $0.1) }, name: depthwiseNode.layer, layer: depthwiseNode.layer)
        fused.fusedOps = ["fused_block(" + sources.flatMap(\.0.fusedOps).joined(separator: " + ") + ")"]
        editor.graph.nodes[index] = fused
        editor.remove(depthwiseIndex)
        if let squeeze { editor.remove(squeeze.index) }
        if let expand { editor.remove(expand.index) }
    }
    return editor.finish()
}
