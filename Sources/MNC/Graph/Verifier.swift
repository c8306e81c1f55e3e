/// Checks the graph's structural invariants:
/// - every input index refers to an earlier node, so values are defined once and there is no cycle;
/// - the input node comes first and only there; the output index is valid;
/// - each op's input count and shapes agree with its attributes and its output shape;
/// - every parameter has the shape its op requires, and bound constants match parameter shapes.
///
/// `pass` names the pass that produced the graph, so a failure says which pass broke it.
public func verify(_ graph: Graph, after pass: String? = nil) throws {
    func fail(_ index: Int, _ message: String) -> MNCError {
        let node = index < graph.nodes.count ? graph.nodes[index] : nil
        let nodeName = node.map { "node \(index) '\($0.name)' (\($0.op.mnemonic))" } ?? "node \(index)"
        let origin = pass.map { "graph verification failed after pass '\($0)'" } ?? "graph verification failed"
        return MNCError("\(origin): \(nodeName): \(message)")
    }

    guard !graph.nodes.isEmpty, graph.nodes[0].op == .input else {
        throw fail(0, "the first node must be the input")
    }
    guard graph.output > 0 && graph.output < graph.nodes.count else {
        throw fail(graph.output, "the output index is out of range")
    }

    for (index, node) in graph.nodes.enumerated() {
        for input in node.inputs where input < 0 || input >= index {
            throw fail(index, "input \(input) is not an earlier node (use before definition or a cycle)")
        }
        let inputs = node.inputs.map { graph.nodes[$0].shape }
        func expectInputs(_ count: Int) throws {
            guard inputs.count == count else { throw fail(index, "expected \(count) inputs, found \(inputs.count)") }
        }
        func expectShape(_ shape: [Int]) throws {
            guard node.shape == shape else { throw fail(index, "output shape \(node.shape), expected \(shape)") }
        }
        func expectParameter(_ role: String, _ shape: [Int]) throws {
            guard let parameter = node.parameter(role) else { throw fail(index, "missing parameter '\(role)'") }
            guard parameter.shape == shape else {
                throw fail(index, "parameter '\(parameter.key)' has shape \(parameter.shape), expected \(shape)")
            }
        }
        guard node.shape.allSatisfy({ $0 > 0 }) else { throw fail(index, "invalid shape \(node.shape)") }

        switch node.op {
        case .input:
            guard index == 0 else { throw fail(index, "only the first node may be the input") }
            try expectInputs(0)
            guard node.shape.count == 4 else { throw fail(index, "the input must be [1, C, H, W]") }
        case .conv2d(let conv):
            try expectInputs(conv.hasResidual ? 2 : 1)
            let x = inputs[0]
            guard x.count == 4, x[1] == conv.inChannels else {
                throw fail(index, "input shape \(x) does not have \(conv.inChannels) channels")
            }
            guard conv.groups >= 1, conv.inChannels % conv.groups == 0, conv.outChannels % conv.groups == 0 else {
                throw fail(index, "groups \(conv.groups) do not divide the channel counts")
            }
            let outHeight = (x[2] + conv.padding.top + conv.padding.bottom - conv.kernelHeight) / conv.strideHeight + 1
            let outWidth = (x[3] + conv.padding.left + conv.padding.right - conv.kernelWidth) / conv.strideWidth + 1
            try expectShape([1, conv.outChannels, outHeight, outWidth])
            try expectParameter("weight", conv.weightShape)
            if conv.hasBias { try expectParameter("bias", [conv.outChannels]) }
            if conv.hasResidual, inputs[1] != node.shape {
                throw fail(index, "residual shape \(inputs[1]) differs from the output shape \(node.shape)")
            }
        case .batchNorm:
            try expectInputs(1)
            try expectShape(inputs[0])
            for role in ["weight", "bias", "running_mean", "running_var"] {
                try expectParameter(role, [node.shape[1]])
            }
        case .activation, .dropout:
            try expectInputs(1)
            try expectShape(inputs[0])
        case .add:
            try expectInputs(2)
            guard inputs[0] == inputs[1] else { throw fail(index, "operand shapes \(inputs[0]) and \(inputs[1]) differ") }
            try expectShape(inputs[0])
        case .globalAveragePool:
            try expectInputs(1)
            guard inputs[0].count == 4 else { throw fail(index, "input must be a feature map") }
            try expectShape([1, inputs[0][1], 1, 1])
        case .flatten:
            try expectInputs(1)
            guard inputs[0].count == 4, inputs[0][2] == 1, inputs[0][3] == 1 else {
                throw fail(index, "input \(inputs[0]) is not [1, C, 1, 1]")
            }
            try expectShape([1, inputs[0][1]])
        case .linear(let linear):
            try expectInputs(1)
            guard inputs[0] == [1, linear.inFeatures] || inputs[0] == [1, linear.inFeatures, 1, 1] else {
                throw fail(index, "input shape \(inputs[0]), expected [1, \(linear.inFeatures)]")
            }
            try expectShape([1, linear.outFeatures])
            try expectParameter("weight", [linear.outFeatures, linear.inFeatures])
            if linear.hasBias { try expectParameter("bias", [linear.outFeatures]) }
        case .channelScale:
            try expectInputs(2)
            guard inputs[0].count == 4, inputs[1] == [1, inputs[0][1], 1, 1] else {
                throw fail(index, "scale shape \(inputs[1]) does not broadcast over \(inputs[0])")
            }
            try expectShape(inputs[0])
        case .squeezeExcite(let se):
            try expectInputs(1)
            guard inputs[0].count == 4, inputs[0][1] == se.channels else {
                throw fail(index, "input shape \(inputs[0]) does not have \(se.channels) channels")
            }
            try expectShape(inputs[0])
            try expectParameter("fc1.weight", [se.squeezeChannels, se.channels, 1, 1])
            try expectParameter("fc1.bias", [se.squeezeChannels])
            try expectParameter("fc2.weight", [se.channels, se.squeezeChannels, 1, 1])
            try expectParameter("fc2.bias", [se.channels])
        case .fusedBlock(let block):
            try expectInputs(block.project.hasResidual ? 2 : 1)
            let x = inputs[0]
            func outputSize(_ conv: Conv2D, _ height: Int, _ width: Int) -> (Int, Int) {
                ((height + conv.padding.top + conv.padding.bottom - conv.kernelHeight) / conv.strideHeight + 1,
                 (width + conv.padding.left + conv.padding.right - conv.kernelWidth) / conv.strideWidth + 1)
            }
            guard x.count == 4 else { throw fail(index, "input must be a feature map") }
            var expanded = (x[2], x[3]), channels = x[1]
            if let expand = block.expand {
                guard expand.groups == 1, !expand.hasResidual, expand.inChannels == x[1] else {
                    throw fail(index, "the expansion must be a convolution with groups 1 and no residual on the input's \(x[1]) channels")
                }
                expanded = outputSize(expand, x[2], x[3])
                channels = expand.outChannels
            }
            guard expanded == (block.expandedHeight, block.expandedWidth) else {
                throw fail(index, "expanded size \(block.expandedHeight)x\(block.expandedWidth), expected \(expanded.0)x\(expanded.1)")
            }
            let depthwise = block.depthwise, project = block.project
            guard depthwise.isDepthwise, !depthwise.hasResidual, depthwise.inChannels == channels else {
                throw fail(index, "the depthwise stage must be a depthwise convolution on \(channels) channels without residual")
            }
            guard project.isPointwise, project.strideHeight == 1, project.strideWidth == 1,
                  project.padding == Padding(top: 0, left: 0, bottom: 0, right: 0), project.inChannels == depthwise.outChannels else {
                throw fail(index, "the projection must be a 1x1 convolution with stride 1 and no padding on \(depthwise.outChannels) channels")
            }
            let size = outputSize(depthwise, expanded.0, expanded.1)
            try expectShape([1, project.outChannels, size.0, size.1])
            for (prefix, conv) in block.stages {
                try expectParameter("\(prefix).weight", conv.weightShape)
                if conv.hasBias { try expectParameter("\(prefix).bias", [conv.outChannels]) }
            }
            if let se = block.squeezeExcite {
                guard se.channels == depthwise.outChannels else {
                    throw fail(index, "the squeeze-excitation has \(se.channels) channels, the depthwise output \(depthwise.outChannels)")
                }
                try expectParameter("se.fc1.weight", [se.squeezeChannels, se.channels, 1, 1])
                try expectParameter("se.fc1.bias", [se.squeezeChannels])
                try expectParameter("se.fc2.weight", [se.channels, se.squeezeChannels, 1, 1])
                try expectParameter("se.fc2.bias", [se.channels])
            }
            if project.hasResidual, inputs[1] != node.shape {
                throw fail(index, "residual shape \(inputs[1]) differs from the output shape \(node.shape)")
            }
        }

        if !graph.constants.isEmpty {
            for parameter in node.parameters {
                guard let tensor = graph.constants[parameter.key] else {
                    throw fail(index, "parameter '\(parameter.key)' has no bound value")
                }
                guard tensor.shape == parameter.shape, tensor.data.count == parameter.elementCount else {
                    throw fail(index, "bound value of '\(parameter.key)' has shape \(tensor.shape), expected \(parameter.shape)")
                }
            }
        }
    }
}
