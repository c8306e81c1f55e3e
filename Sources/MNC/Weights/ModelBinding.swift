/// Binding the weights of a TFLite or ONNX model to a graph built from a spec.
///
/// Both formats are matched by position: the graph's `conv2d`, `linear` and `squeezeExcite`
/// nodes in graph order against the file's weighted operators in file order. Each pair is
/// checked (kernel, stride, padding, groups, channels, activation) before its weights are
/// converted to the graph's PyTorch layout. A spec that does not describe the file therefore
/// fails with a message that names the spec layer, the operator and what differs.

/// Binds the weights of a TFLite model to `graph`; see `bindWeights`. `file` names the model in
/// error messages.
public func bindTFLite(_ model: TFLiteModel, to graph: Graph, file: String) throws -> Graph {
    try bindWeights(try model.weightedLayers(file: file), to: graph,
                    context: BindingContext(file: file, operatorNoun: "convolution and fully-connected operators",
                                            supportsSqueezeExcite: false))
}

/// Binds the weights of an ONNX model to `graph`; see `bindWeights`.
public func bindONNX(_ model: ONNXModel, to graph: Graph, file: String) throws -> Graph {
    try bindWeights(try model.weightedLayers(file: file), to: graph,
                    context: BindingContext(file: file, operatorNoun: "Conv, Gemm and MatMul nodes",
                                            supportsSqueezeExcite: true))
}

/// A weighted operator of a model file, normalized so it can be compared with a graph node.
struct FileLayer {
    enum Kind {
        case convolution
        case depthwise
        case fullyConnected
    }

    var kind: Kind
    /// The operator's name in error messages, e.g. `operator 7 (CONV_2D)` or `node 12 (Conv /features/.../Conv)`.
    var label: String
    var kernelHeight = 1
    var kernelWidth = 1
    var strideHeight = 1
    var strideWidth = 1
    var dilationHeight = 1
    var dilationWidth = 1
    var padding: FilePadding = .explicit(Padding(top: 0, left: 0, bottom: 0, right: 0))
    var groups = 1
    var inChannels: Int
    var outChannels: Int
    var activation: FileActivation = .identity
    /// `[out, in / groups, kh, kw]` for convolutions, `[out, in]` for fully-connected layers.
    var weight: [Float]
    var bias: [Float]?
    /// A BatchNormalization that follows the convolution in the file (ONNX files exported without folding).
    var batchNorm: FileBatchNorm?

    /// Rejects strides and dilations below 1, which no convolution has and which would divide
    /// by zero when padding is resolved.
    func checkSteps(file: String) throws {
        guard strideHeight >= 1, strideWidth >= 1 else {
            throw MNCError("\(file): \(label) has stride \(strideHeight)x\(strideWidth), which must be at least 1")
        }
        guard dilationHeight >= 1, dilationWidth >= 1 else {
            throw MNCError("\(file): \(label) has dilation \(dilationHeight)x\(dilationWidth), which must be at least 1")
        }
    }

    var kindDescription: String {
        switch kind {
        case .fullyConnected: return "a fully-connected layer"
        case .convolution, .depthwise: return describeConvolutionKind(groups: groups, inChannels: inChannels)
        }
    }
}

enum FilePadding {
    case explicit(Padding)
    /// TensorFlow `SAME` (ONNX `SAME_UPPER`): the odd pixel of padding goes after; ONNX
    /// `SAME_LOWER` puts it before.
    case same(extraBefore: Bool)
    case valid
}

/// The activation that a file applies after an operator (fused, or the operator's only consumer).
struct FileActivation {
    /// nil when the graph IR has no such activation.
    var activation: Activation?
    /// The name in messages: the IR name when there is one, else the file's, e.g. `TANH`.
    var name: String

    static let identity = FileActivation(activation: .identity, name: Activation.identity.rawValue)

    init(activation: Activation?, name: String) {
        self.activation = activation
        self.name = name
    }

    init(_ activation: Activation) {
        self.init(activation: activation, name: activation.rawValue)
    }
}

struct FileBatchNorm {
    var label: String
    var scale: [Float]
    var bias: [Float]
    var mean: [Float]
    var variance: [Float]
    var epsilon: Float
}

struct BindingContext {
    var file: String
    /// The plural noun for the file's weighted operators in count-mismatch messages.
    var operatorNoun: String
    var supportsSqueezeExcite: Bool
}

func describeConvolutionKind(groups: Int, inChannels: Int) -> String {
    if groups == 1 { return "a convolution" }
    if groups == inChannels { return "a depthwise convolution" }
    return "a convolution with \(groups) groups"
}

/// `2` for a square pair, else `2x1` (height × width).
private func describePair(_ height: Int, _ width: Int) -> String {
    height == width ? "\(height)" : "\(height)x\(width)"
}

/// Returns the padding that `padding` amounts to on an `inputHeight × inputWidth` input.
/// TensorFlow `SAME` pads `max((ceil(in / stride) - 1) * stride + effective kernel - in, 0)` in
/// total, with the smaller half before.
func resolvePadding(_ padding: FilePadding, inputHeight: Int, inputWidth: Int, layer: FileLayer) -> Padding {
    switch padding {
    case .explicit(let value):
        return value
    case .valid:
        return Padding(top: 0, left: 0, bottom: 0, right: 0)
    case .same(let extraBefore):
        func split(_ size: Int, _ kernel: Int, _ stride: Int, _ dilation: Int) -> (Int, Int) {
            let effective = (kernel - 1) * dilation + 1
            let outputs = (size + stride - 1) / stride
            let total = max((outputs - 1) * stride + effective - size, 0)
            let smaller = total / 2
            return extraBefore ? (total - smaller, smaller) : (smaller, total - smaller)
        }
        let (top, bottom) = split(inputHeight, layer.kernelHeight, layer.strideHeight, layer.dilationHeight)
        let (left, right) = split(inputWidth, layer.kernelWidth, layer.strideWidth, layer.dilationWidth)
        return Padding(top: top, left: left, bottom: bottom, right: right)
    }
}

/// A weighted node of the graph with the BatchNorm and activation that follow it.
private struct GraphLayer {
    var node: Int
    /// The `batchNorm` node whose only input is this convolution, when it is the convolution's only reader.
    var batchNorm: Int?
    /// The activation applied after the node (and its BatchNorm): fused into the node or the
    /// node's only reader.
    var activation: Activation
}

private func weightedLayers(of graph: Graph) -> [GraphLayer] {
    var users = [[Int]](repeating: [], count: graph.nodes.count)
    for (index, node) in graph.nodes.enumerated() {
        for input in Set(node.inputs) where input >= 0 && input < users.count {
            users[input].append(index)
        }
    }
    func followingActivation(_ index: Int, fused: Activation) -> Activation {
        if fused != .identity { return fused }
        guard users[index].count == 1, index != graph.output,
              case .activation(let kind) = graph.nodes[users[index][0]].op else { return .identity }
        return kind
    }
    var layers: [GraphLayer] = []
    for (index, node) in graph.nodes.enumerated() {
        switch node.op {
        case .conv2d(let conv):
            var batchNorm: Int?
            if users[index].count == 1, index != graph.output,
               case .batchNorm = graph.nodes[users[index][0]].op {
                batchNorm = users[index][0]
            }
            let last = batchNorm ?? index
            layers.append(GraphLayer(node: index, batchNorm: batchNorm,
                                     activation: followingActivation(last, fused: conv.activation)))
        case .linear(let linear):
            layers.append(GraphLayer(node: index, batchNorm: nil,
                                     activation: followingActivation(index, fused: linear.activation)))
        case .squeezeExcite:
            layers.append(GraphLayer(node: index, batchNorm: nil, activation: .identity))
        default:
            break
        }
    }
    return layers
}

/// The state of one binding: the graph, the constants found so far and the BatchNorms to fold.
private struct Binder {
    let context: BindingContext
    let graph: Graph
    var constants: [String: Tensor] = [:]
    /// (convolution, BatchNorm) pairs whose BatchNorm the file has folded into the convolution's
    /// weights and bias.
    var folds: [(conv: Int, batchNorm: Int, biasKey: String)] = []

    init(context: BindingContext, graph: Graph) {
        self.context = context
        self.graph = graph
    }

    func layerName(_ index: Int) -> String {
        let node = graph.nodes[index]
        return node.layer.isEmpty ? node.name : node.layer
    }

    /// `actual` is the predicate about the file's operator, e.g. `has stride 1` or `is a convolution`.
    func mismatch(_ layer: String, expects expected: String, _ file: FileLayer, _ actual: String) -> MNCError {
        MNCError("\(context.file): layer \(layer) expects \(expected), \(file.label) in the model \(actual)")
    }

    /// Stores `values` under the key of parameter `role` of node `index`, when the node has that parameter.
    mutating func store(_ values: [Float], node index: Int, role: String, from file: FileLayer) throws {
        guard let parameter = graph.nodes[index].parameter(role) else { return }
        guard parameter.elementCount == values.count else {
            throw MNCError("\(context.file): parameter \(parameter.key) of layer \(layerName(index)) has shape \(describeShape(parameter.shape)), but \(file.label) in the model provides \(values.count) values")
        }
        constants[parameter.key] = Tensor(shape: parameter.shape, data: values)
    }

    mutating func bindConvolution(_ layer: GraphLayer, _ conv: Conv2D, _ file: FileLayer) throws {
        let name = layerName(layer.node)
        let expectedKind = describeConvolutionKind(groups: conv.groups, inChannels: conv.inChannels)
        guard file.kind != .fullyConnected, expectedKind == file.kindDescription else {
            throw mismatch(name, expects: expectedKind, file, "is \(file.kindDescription)")
                
        }
        let input = graph.nodes[graph.nodes[layer.node].inputs.first ?? 0].shape
        let inputHeight = input.count == 4 ? input[2] : 1
        let inputWidth = input.count == 4 ? input[3] : 1
        try checkConvolutionShape(name, file, kernel: (conv.kernelHeight, conv.kernelWidth),
                                  stride: (conv.strideHeight, conv.strideWidth), padding: conv.padding,
                                  input: (inputHeight, inputWidth), channels: (conv.inChannels, conv.outChannels),
                                  groups: conv.groups)
        try checkActivation(name, expected: layer.activation, file)
        try store(file.weight, node: layer.node, role: "weight", from: file)

        guard let batchNorm = layer.batchNorm else {
            if file.batchNorm != nil {
                throw MNCError("\(context.file): layer \(name) has no BatchNorm, but \(file.label) in the model is followed by BatchNormalization")
            }
            try bindBias(layer.node, hasBias: conv.hasBias, file, name: name)
            return
        }
        if let fileBatchNorm = file.batchNorm {
            try bindBatchNorm(batchNorm, fileBatchNorm, file, name: name)
            try bindBias(layer.node, hasBias: conv.hasBias, file, name: name)
            return
        }
        guard let bias = file.bias else {
            throw MNCError("\(context.file): layer \(name) has a BatchNorm, but \(file.label) in the model has neither a bias that holds the folded BatchNorm nor a BatchNormalization")
        }
        // The file has folded the BatchNorm into the convolution: bind its bias to the
        // convolution and drop the BatchNorm node afterwards.
        let node = graph.nodes[layer.node]
        let biasKey = node.parameter("bias")?.key ?? biasKeyDerived(from: node)
        guard bias.count == conv.outChannels else {
            throw MNCError("\(context.file): \(file.label) in the model has \(bias.count) bias values, layer \(name) has \(conv.outChannels) output channels")
        }
        constants[biasKey] = Tensor(shape: [conv.outChannels], data: bias)
        folds.append((conv: layer.node, batchNorm: batchNorm, biasKey: biasKey))
    }

    /// Returns the weight key with its final `weight` replaced by `bias`
    /// (`features.0.0.weight` → `features.0.0.bias`).
    func biasKeyDerived(from node: Node) -> String {
        guard let weightKey = node.parameter("weight")?.key else { return node.name + ".bias" }
        if weightKey.hasSuffix("weight") {
            return String(weightKey.dropLast("weight".count)) + "bias"
        }
        return weightKey + ".bias"
    }

    func checkConvolutionShape(_ name: String, _ file: FileLayer, kernel: (Int, Int), stride: (Int, Int),
                               padding: Padding, input: (Int, Int), channels: (Int, Int), groups: Int) throws {
        guard (file.kernelHeight, file.kernelWidth) == kernel else {
            throw mismatch(name, expects: "kernel \(kernel.0)x\(kernel.1)", file,
                           "has kernel \(file.kernelHeight)x\(file.kernelWidth)")
        }
        guard (file.strideHeight, file.strideWidth) == stride else {
            throw mismatch(name, expects: "stride \(describePair(stride.0, stride.1))", file,
                           "has stride \(describePair(file.strideHeight, file.strideWidth))")
        }
        guard file.dilationHeight == 1, file.dilationWidth == 1 else {
            throw mismatch(name, expects: "dilation 1", file,
                           "has dilation \(describePair(file.dilationHeight, file.dilationWidth))")
        }
        let filePadding = resolvePadding(file.padding, inputHeight: input.0, inputWidth: input.1, layer: file)
        guard filePadding == padding else {
            var actual = "has padding \(filePadding)"
            switch file.padding {
            case .same: actual = "has padding SAME, which is \(filePadding) for a \(input.0)x\(input.1) input"
            case .valid: actual = "has padding VALID"
            case .explicit: break
            }
            throw mismatch(name, expects: "padding \(padding)", file, actual)
        }
        guard file.inChannels == channels.0 else {
            throw mismatch(name, expects: "\(channels.0) input channels", file, "has \(file.inChannels)")
        }
        guard file.outChannels == channels.1 else {
            throw mismatch(name, expects: "\(channels.1) output channels", file, "has \(file.outChannels)")
        }
        guard file.groups == groups else {
            throw mismatch(name, expects: "\(groups) groups", file, "has \(file.groups)")
        }
    }

    func checkActivation(_ name: String, expected: Activation, _ file: FileLayer) throws {
        guard file.activation.activation == expected else {
            throw mismatch(name, expects: "activation \(expected.rawValue)", file,
                           "has activation \(file.activation.name)")
        }
    }

    /// Binds the bias of a node without BatchNorm. A file bias that the graph lacks is accepted
    /// only when it is all zeros, since dropping it then changes nothing.
    mutating func bindBias(_ index: Int, hasBias: Bool, _ file: FileLayer, name: String) throws {
        if hasBias {
            guard let bias = file.bias else {
                throw MNCError("\(context.file): layer \(name) expects a bias, \(file.label) in the model has none")
            }
            try store(bias, node: index, role: "bias", from: file)
        } else if let bias = file.bias, bias.contains(where: { $0 != 0 }) {
            throw MNCError("\(context.file): layer \(name) has no bias, but \(file.label) in the model has a nonzero bias")
        }
    }

    mutating func bindBatchNorm(_ index: Int, _ batchNorm: FileBatchNorm, _ file: FileLayer, name: String) throws {
        guard case .batchNorm(let epsilon) = graph.nodes[index].op else { return }
        guard abs(epsilon - batchNorm.epsilon) <= 1e-6 * max(abs(epsilon), 1e-12) else {
            throw MNCError("\(context.file): layer \(name) expects BatchNorm epsilon \(epsilon), \(batchNorm.label) in the model has epsilon \(batchNorm.epsilon)")
        }
        try store(batchNorm.scale, node: index, role: "weight", from: file)
        try store(batchNorm.bias, node: index, role: "bias", from: file)
        try store(batchNorm.mean, node: index, role: "running_mean", from: file)
        try store(batchNorm.variance, node: index, role: "running_var", from: file)
    }

    mutating func bindLinear(_ layer: GraphLayer, _ linear: Linear, _ file: FileLayer) throws {
        let name = layerName(layer.node)
        switch file.kind {
        case .fullyConnected:
            break
        case .convolution where file.kernelHeight == 1 && file.kernelWidth == 1 && file.groups == 1:
            // A 1×1 convolution on a 1×1 map (TF-slim logits) computes the same as a linear
            // layer, and `[out, in, 1, 1]` has the same order as `[out, in]`.
            break
        default:
            throw mismatch(name, expects: "a linear layer", file, "is \(file.kindDescription)")
        }
        guard file.inChannels == linear.inFeatures else {
            throw mismatch(name, expects: "\(linear.inFeatures) input features", file, "has \(file.inChannels)")
        }
        guard file.outChannels == linear.outFeatures else {
            throw mismatch(name, expects: "\(linear.outFeatures) output features", file, "has \(file.outChannels)")
        }
        if file.batchNorm != nil {
            throw MNCError("\(context.file): layer \(name) has no BatchNorm, but \(file.label) in the model is followed by BatchNormalization")
        }
        try checkActivation(name, expected: layer.activation, file)
        try store(file.weight, node: layer.node, role: "weight", from: file)
        try bindBias(layer.node, hasBias: linear.hasBias, file, name: name)
    }

    /// Binds a squeeze-excitation block to two 1×1 convolutions with bias: `fc1` (C → squeeze,
    /// followed by the block's activation) and `fc2` (squeeze → C, followed by the gate).
    mutating func bindSqueezeExcite(_ layer: GraphLayer, _ block: SqueezeExcite, _ fc1: FileLayer, _ fc2: FileLayer) throws {
        let name = layerName(layer.node)
        let zero = Padding(top: 0, left: 0, bottom: 0, right: 0)
        for (part, file, channels, activation) in [("fc1", fc1, (block.channels, block.squeezeChannels), block.activation),
                                                   ("fc2", fc2, (block.squeezeChannels, block.channels), block.gate)] {
            let partName = "\(name) (squeeze-excitation \(part))"
            guard file.kind == .convolution || file.kind == .depthwise else {
                throw mismatch(partName, expects: "a convolution", file, "is \(file.kindDescription)")
            }
            try checkConvolutionShape(partName, file, kernel: (1, 1), stride: (1, 1), padding: zero, input: (1, 1),
                                      channels: channels, groups: 1)
            try checkActivation(partName, expected: activation, file)
            guard let bias = file.bias else {
                throw MNCError("\(context.file): layer \(partName) expects a bias, \(file.label) in the model has none")
            }
            try store(file.weight, node: layer.node, role: "\(part).weight", from: file)
            try store(bias, node: layer.node, role: "\(part).bias", from: file)
        }
    }
}

/// Matches the graph's weighted nodes with `fileLayers` in order, checks each pair, and returns
/// the graph with `constants` set for every parameter key. Convolution + BatchNorm pairs whose
/// BatchNorm the file has folded become a convolution with bias (key: the weight key with
/// `weight` replaced by `bias`), and the BatchNorm node is removed.
func bindWeights(_ fileLayers: [FileLayer], to graph: Graph, context: BindingContext) throws -> Graph {
    var binder = Binder(context: context, graph: graph)
    let graphLayers = weightedLayers(of: graph)
    var next = 0
    func take(_ layer: GraphLayer) throws -> FileLayer {
        guard next < fileLayers.count else {
            throw MNCError("\(context.file): layer \(binder.layerName(layer.node)) has no matching operator: the model has only \(fileLayers.count) \(context.operatorNoun)")
        }
        next += 1
        return fileLayers[next - 1]
    }
    for layer in graphLayers {
        switch graph.nodes[layer.node].op {
        case .conv2d(let conv):
            try binder.bindConvolution(layer, conv, try take(layer))
        case .linear(let linear):
            try binder.bindLinear(layer, linear, try take(layer))
        case .squeezeExcite(let block):
            guard context.supportsSqueezeExcite else {
                throw MNCError("\(context.file): layer \(binder.layerName(layer.node)) is a squeeze-excitation block, which TFLite weights cannot be bound to; use the model's ONNX export or a PyTorch state dict")
            }
            let fc1 = try take(layer)
            let fc2 = try take(layer)
            try binder.bindSqueezeExcite(layer, block, fc1, fc2)
        default:
            break
        }
    }
    if next < fileLayers.count {
        let weightedCount = graphLayers.count
        throw MNCError("\(context.file): \(fileLayers[next].label) in the model has no matching layer: the graph has \(weightedCount) convolution, linear and squeeze-excitation layers, which match the first \(next) \(context.operatorNoun)")
    }
    return try applyFolds(binder)
}

/// Turns each folded convolution + BatchNorm pair into a convolution with bias, drops the
/// BatchNorm nodes, and checks that every parameter has a constant.
private func applyFolds(_ binder: Binder) throws -> Graph {
    var result = binder.graph
    result.constants.merge(binder.constants) { _, new in new }
    for fold in binder.folds {
        guard case .conv2d(var conv) = result.nodes[fold.conv].op else { continue }
        conv.hasBias = true
        result.nodes[fold.conv].op = .conv2d(conv)
        if result.nodes[fold.conv].parameter("bias") == nil {
            result.nodes[fold.conv].parameters.append(
                Parameter(role: "bias", key: fold.biasKey, shape: [conv.outChannels]))
        }
        result.replaceUses(of: fold.batchNorm, with: fold.conv)
    }
    result.removeNodes(Set(binder.folds.map(\.batchNorm)))

    for node in result.nodes {
        for parameter in node.parameters {
            guard let tensor = result.constants[parameter.key] else {
                let layer = node.layer.isEmpty ? node.name : node.layer
                throw MNCError("\(binder.context.file): the model provides no value for parameter \(parameter.key) (\(parameter.role)) of layer \(layer)")
            }
            guard tensor.shape == parameter.shape else {
                throw MNCError("\(binder.context.file): parameter \(parameter.key) has shape \(describeShape(parameter.shape)), but the bound value has shape \(describeShape(tensor.shape))")
            }
        }
    }
    try checkFiniteConstants(result, file: binder.context.file)
    return result
}
