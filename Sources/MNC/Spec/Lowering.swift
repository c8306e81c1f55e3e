/// Lowers a parsed spec to the graph IR: applies the width multiplier and channel rounding,
/// expands the MobileNet tables into convolution, BatchNorm and activation nodes, and names every
/// parameter with the key that PyTorch's `state_dict` gives it.
///
/// Module paths follow torchvision's layout: layers before `pool avg` are `features.N`, the
/// layers after it `classifier.N` (every module counts, activations and dropout included, as in
/// an `nn.Sequential`). Inside a `conv` statement the convolution is `.0`, the BatchNorm `.1`;
/// V1 separable blocks are `.0` depthwise, `.1` BN, `.3` pointwise, `.4` BN; V2 blocks are
/// `features.N.conv.*` and V3 blocks `features.N.block.*` exactly as torchvision writes them.
public func lower(_ spec: Spec) throws -> Graph {
    var lowering = SpecLowering(spec: spec)
    return try lowering.run()
}

/// The largest number of elements in one tensor; keeps every size and C index within 32 bits.
public let maxTensorElements = 1 << 31 - 1

struct SpecLowering {
    let spec: Spec
    var builder = GraphBuilder()
    var current = 0
    var featureIndex = 0
    var classifierIndex = 0
    var pooled = false
    /// The location of the statement being lowered, for errors about the network as a whole.
    var lastLocation: SourceLocation?

    init(spec: Spec) {
        self.spec = spec
    }

    var channels: Int { builder.nodes[current].shape[1] }

    mutating func run() throws -> Graph {
        try checkTotalStride()
        let inputShape = [1, spec.inputChannels, spec.inputHeight, spec.inputWidth]
        current = builder.add(.input, inputs: [], shape: inputShape, name: "input", layer: "input")

        for layer in spec.layers {
            lastLocation = layer.location
            switch layer {
            case .conv(let statement):
                try lowerConv(statement)
            case .separable(let activation, let rows, _):
                for row in rows {
                    for repeatIndex in 0..<row.repeats {
                        try lowerSeparable(row, stride: repeatIndex == 0 ? row.stride : 1, activation: activation)
                    }
                }
            case .invertedResidual(let activation, let rows, _):
                for row in rows {
                    for repeatIndex in 0..<row.repeats {
                        try lowerInvertedResidual(row, stride: repeatIndex == 0 ? row.stride : 1, activation: activation)
                    }
                }
            case .bottleneck(let gate, let rows, _):
                try lowerBottlenecks(rows, gate: gate)
            case .globalAveragePool(let location):
                guard builder.nodes[current].shape.count == 4 else {
                    throw MNCError("pool avg needs a feature map, but the previous layer produces a vector", at: location)
                }
                current = builder.add(.globalAveragePool, inputs: [current], shape: [1, channels, 1, 1],
                                      name: "avgpool", layer: "avgpool")
                pooled = true
            case .dropout(let probability, _):
                let name = nextModuleName()
                current = builder.add(.dropout(probability: probability), inputs: [current],
                                      shape: builder.nodes[current].shape, name: name, layer: name)
            case .linear(let out, let activation, let hasBias, let location):
                try lowerLinear(out: out, activation: activation, hasBias: hasBias, location: location)
            }
        }

        try finishOutput()
        let graph = Graph(name: spec.name, nodes: builder.nodes, output: current, preprocessing: spec.preprocessing)
        try verify(graph)
        return graph
    }

    // MARK: - Statements

    private mutating func lowerConv(_ statement: ConvStatement) throws {
        let out = try resolve(statement.out, location: statement.location, inTail: false)
        let module = nextModuleName()
        try requireFeatureMap(statement.location, what: "conv")
        current = try builder.conv(current, out: out, kernel: statement.kernel, stride: statement.stride, groups: 1,
                                   bias: statement.hasBias, padding: spec.padding, name: "\(module).0", layer: module)
        var next = 1
        if statement.hasBatchNorm {
            current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).1", layer: module)
            next = 2
        }
        current = builder.activation(current, statement.activation, name: "\(module).\(next)", layer: module)
        try checkSize(statement.location)
    }

    private mutating func lowerSeparable(_ row: SeparableRow, stride: Int, activation: Activation) throws {
        try requireFeatureMap(row.location, what: "a separable row")
        let module = nextModuleName()
        let input = channels
        let out = spec.rounding.apply(Double(row.channels) * spec.widthMultiplier)
        current = try builder.conv(current, out: input, kernel: 3, stride: stride, groups: input, bias: false,
                                   padding: spec.padding, name: "\(module).0", layer: module)
        current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).1", layer: module)
        current = builder.activation(current, activation, name: "\(module).2", layer: module)
        current = try builder.conv(current, out: out, kernel: 1, stride: 1, groups: 1, bias: false,
                                   padding: spec.padding, name: "\(module).3", layer: module)
        current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).4", layer: module)
        current = builder.activation(current, activation, name: "\(module).5", layer: module)
        try checkSize(row.location)
    }

    /// torchvision's `InvertedResidual`: expand 1×1 (absent when t = 1), depthwise 3×3, project 1×1
    /// without activation, and a residual add when the stride is 1 and the channel counts agree.
    private mutating func lowerInvertedResidual(_ row: InvertedResidualRow, stride: Int, activation: Activation) throws {
        try requireFeatureMap(row.location, what: "an inverted_residual row")
        let module = nextModuleName()
        let block = current
        let input = channels
        let out = spec.rounding.apply(Double(row.channels) * spec.widthMultiplier)
        // Python's round() on the product, which is exact for integer expansion ratios.
        let hidden = Int((Double(input) * row.expansion).rounded(.toNearestOrEven))
        var index = 0
        if row.expansion != 1 {
            current = try builder.conv(current, out: hidden, kernel: 1, stride: 1, groups: 1, bias: false,
                                       padding: spec.padding, name: "\(module).conv.\(index).0", layer: module)
            current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).conv.\(index).1", layer: module)
            current = builder.activation(current, activation, name: "\(module).conv.\(index).2", layer: module)
            index += 1
        }
        current = try builder.conv(current, out: hidden, kernel: 3, stride: stride, groups: hidden, bias: false,
                                   padding: spec.padding, name: "\(module).conv.\(index).0", layer: module)
        current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).conv.\(index).1", layer: module)
        current = builder.activation(current, activation, name: "\(module).conv.\(index).2", layer: module)
        index += 1
        current = try builder.conv(current, out: out, kernel: 1, stride: 1, groups: 1, bias: false,
                                   padding: spec.padding, name: "\(module).conv.\(index)", layer: module)
        current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).conv.\(index + 1)", layer: module)
        if stride == 1 && input == out {
            current = builder.add(.add, inputs: [block, current], shape: builder.nodes[current].shape,
                                  name: "\(module).add", layer: module)
        }
        try checkSize(row.location)
    }

    /// torchvision's MobileNetV3 `InvertedResidual` for each `bneck` row.
    private mutating func lowerBottlenecks(_ rows: [BottleneckRow], gate: Activation) throws {
        // reduced_tail halves the rows of the last stage: from the last stride-2 row to the end.
        let tailStart = spec.reducedTail ? (rows.lastIndex { $0.stride == 2 } ?? rows.count) : rows.count
        let alpha = spec.widthMultiplier
        let rounding = spec.rounding
        let adjust = { (value: Int) in rounding.apply(Double(value) * alpha) }

        for (rowIndex, row) in rows.enumerated() {
            try requireFeatureMap(row.location, what: "a bneck row")
            if rowIndex > 0, row.inputChannels != rows[rowIndex - 1].outChannels {
                throw MNCError("bneck row input_c \(row.inputChannels) differs from the previous row's out_c \(rows[rowIndex - 1].outChannels): each row's input is the previous row's output",
                               at: row.location)
            }
            let halveInput = rowIndex > tailStart
            let halveOutput = rowIndex >= tailStart
            let input = adjust(halveInput ? row.inputChannels / 2 : row.inputChannels)
            let expanded = adjust(halveOutput ? row.expandedChannels / 2 : row.expandedChannels)
            let out = adjust(halveOutput ? row.outChannels / 2 : row.outChannels)
            guard input == channels else {
                throw MNCError("bneck row input_c \(row.inputChannels) gives \(input) channels at width \(alpha), but the previous layer produces \(channels): input_c must equal the previous row's out_c",
                               at: row.location)
            }

            let module = nextModuleName()
            let block = current
            var index = 0
            if expanded != input {
                current = try builder.conv(current, out: expanded, kernel: 1, stride: 1, groups: 1, bias: false,
                                           padding: spec.padding, name: "\(module).block.\(index).0", layer: module)
                current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).block.\(index).1", layer: module)
                current = builder.activation(current, row.activation, name: "\(module).block.\(index).2", layer: module)
                index += 1
            }
            current = try builder.conv(current, out: expanded, kernel: row.kernel, stride: row.stride, groups: expanded,
                                       bias: false, padding: spec.padding, name: "\(module).block.\(index).0", layer: module)
            current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).block.\(index).1", layer: module)
            current = builder.activation(current, row.activation, name: "\(module).block.\(index).2", layer: module)
            index += 1
            if row.useSqueezeExcite {
                try lowerSqueezeExcite(channels: expanded, gate: gate, name: "\(module).block.\(index)", layer: module)
                index += 1
            }
            current = try builder.conv(current, out: out, kernel: 1, stride: 1, groups: 1, bias: false,
                                       padding: spec.padding, name: "\(module).block.\(index).0", layer: module)
            current = builder.batchNorm(current, epsilon: spec.batchNormEpsilon, name: "\(module).block.\(index).1", layer: module)
            if row.stride == 1 && input == out {
                current = builder.add(.add, inputs: [block, current], shape: builder.nodes[current].shape,
                                      name: "\(module).add", layer: module)
            }
            try checkSize(row.location)
        }
    }

    /// torchvision's `SqueezeExcitation`: average pool, `fc1` 1×1 conv, ReLU, `fc2` 1×1 conv, gate,
    /// and a per-channel scale of the block's input. Squeeze width: `_make_divisible(C // 4, 8)`.
    private mutating func lowerSqueezeExcite(channels: Int, gate: Activation, name: String, layer: String) throws {
        let input = current
        let squeeze = makeDivisible(Double(channels / 4), divisor: 8)
        var value = builder.add(.globalAveragePool, inputs: [input], shape: [1, channels, 1, 1],
                                name: "\(name).avgpool", layer: layer)
        value = try builder.conv(value, out: squeeze, kernel: 1, stride: 1, groups: 1, bias: true,
                                 padding: .symmetric, name: "\(name).fc1", layer: layer)
        value = builder.activation(value, .relu, name: "\(name).activation", layer: layer)
        value = try builder.conv(value, out: channels, kernel: 1, stride: 1, groups: 1, bias: true,
                                 padding: .symmetric, name: "\(name).fc2", layer: layer)
        value = builder.activation(value, gate, name: "\(name).scale_activation", layer: layer)
        current = builder.add(.channelScale, inputs: [input, value], shape: builder.nodes[input].shape,
                              name: "\(name).scale", layer: layer)
    }

    private mutating func lowerLinear(out: ChannelCount, activation: Activation, hasBias: Bool,
                                      location: SourceLocation) throws {
        var shape = builder.nodes[current].shape
        if shape.count == 4 {
            guard shape[2] == 1 && shape[3] == 1 else {
                throw MNCError("linear needs a pooled input, but the previous layer produces a \(shape[2])x\(shape[3]) feature map: add 'pool avg' before it",
                               at: location)
            }
            current = builder.add(.flatten, inputs: [current], shape: [1, shape[1]], name: "flatten", layer: "flatten")
            shape = [1, shape[1]]
        }
        let features = try resolve(out, location: location, inTail: spec.reducedTail)
        let module = nextModuleName()
        var linear = Linear(inFeatures: shape[1], outFeatures: features, hasBias: hasBias)
        linear.activation = .identity
        var parameters = [Parameter(role: "weight", key: "\(module).weight", shape: [features, shape[1]])]
        if hasBias {
            parameters.append(Parameter(role: "bias", key: "\(module).bias", shape: [features]))
        }
        current = builder.add(.linear(linear), inputs: [current], shape: [1, features], parameters: parameters,
                              name: module, layer: module)
        if activation != .identity {
            let activationModule = nextModuleName()
            current = builder.activation(current, activation, name: activationModule, layer: activationModule)
        }
    }

    // MARK: - Helpers

    private mutating func nextModuleName() -> String {
        if pooled {
            defer { classifierIndex += 1 }
            return "classifier.\(classifierIndex)"
        }
        defer { featureIndex += 1 }
        return "features.\(featureIndex)"
    }

    /// Resolves a written channel count. `inTail` halves plain counts (MobileNetV3 reduced_tail
    /// also halves the classifier's hidden width).
    private func resolve(_ count: ChannelCount, location: SourceLocation, inTail: Bool) throws -> Int {
        let alpha = spec.widthMultiplier
        switch count {
        case .scaled(let value):
            return spec.rounding.apply(Double(inTail ? value / 2 : value) * alpha)
        case .scaledUpOnly(let value):
            return spec.rounding.apply(Double(inTail ? value / 2 : value) * max(1, alpha))
        case .fixed(let value):
            return value
        case .classes:
            return spec.classes
        case .timesInput(let factor):
            return factor * channels
        }
    }

    private func requireFeatureMap(_ location: SourceLocation, what: String) throws {
        guard builder.nodes[current].shape.count == 4 else {
            throw MNCError("\(what) needs a feature map, but the previous layer produces a vector", at: location)
        }
    }

    private func checkSize(_ location: SourceLocation) throws {
        let count = builder.nodes[current].shape.reduce(1) { $0.multipliedReportingOverflow(by: $1).partialValue }
        guard count <= maxTensorElements else {
            throw MNCError("this layer's output \(builder.nodes[current].shape) has more than \(maxTensorElements) elements: reduce the width multiplier or the resolution",
                           at: location)
        }
    }

    /// Rejects inputs smaller than the product of all strides, which no MobileNet can downsample.
    private func checkTotalStride() throws {
        var total = 1
        for layer in spec.layers {
            switch layer {
            case .conv(let statement): total *= statement.stride
            case .separable(_, let rows, _): total = rows.reduce(total) { $0 * $1.stride }
            case .invertedResidual(_, let rows, _): total = rows.reduce(total) { $0 * $1.stride }
            case .bottleneck(_, let rows, _): total = rows.reduce(total) { $0 * $1.stride }
            default: break
            }
            total = min(total, 1 << 20)
        }
        guard spec.inputHeight >= total && spec.inputWidth >= total else {
            let message = "input \(spec.inputHeight)x\(spec.inputWidth) is smaller than the network's total stride \(total): use at least \(total) pixels per side"
            guard let location = spec.headerLocations["input"] else {
                throw MNCError("\(message) (the size set by --resolution or --input-size)")
            }
            throw MNCError(message, at: location)
        }
    }

    private mutating func finishOutput() throws {
        let location = lastLocation ?? SourceLocation(file: spec.file, line: 1, column: 1)
        let shape = builder.nodes[current].shape
        if shape.count == 4 {
            guard shape[2] == 1 && shape[3] == 1 else {
                throw MNCError("the network ends with a \(shape[2])x\(shape[3]) feature map: expected 'pool avg' and a classifier ('linear classes' or 'conv 1x1 out classes') at the end",
                               at: location)
            }
            current = builder.add(.flatten, inputs: [current], shape: [1, shape[1]], name: "flatten", layer: "flatten")
        }
        let outputs = builder.nodes[current].shape[1]
        guard outputs == spec.classes else {
            throw MNCError("the last layer produces \(outputs) values but the network has \(spec.classes) classes: end with 'linear classes' or 'conv 1x1 out classes'",
                           at: location)
        }
    }
}

/// Appends nodes with computed output shapes and torchvision-style parameter keys.
struct GraphBuilder {
    var nodes: [Node] = []

    mutating func add(_ op: Op, inputs: [Int], shape: [Int], parameters: [Parameter] = [],
                      name: String, layer: String) -> Int {
        nodes.append(Node(op: op, inputs: inputs, shape: shape, parameters: parameters, name: name, layer: layer))
        return nodes.count - 1
    }

    mutating func conv(_ input: Int, out: Int, kernel: Int, stride: Int, groups: Int, bias: Bool,
                       padding mode: PaddingMode, name: String, layer: String) throws -> Int {
        let inShape = nodes[input].shape
        let (inChannels, height, width) = (inShape[1], inShape[2], inShape[3])
        let (top, bottom, outHeight) = padAmounts(size: height, kernel: kernel, stride: stride, mode: mode)
        let (left, right, outWidth) = padAmounts(size: width, kernel: kernel, stride: stride, mode: mode)
        let conv = Conv2D(inChannels: inChannels, outChannels: out, kernelHeight: kernel, kernelWidth: kernel,
                          strideHeight: stride, strideWidth: stride,
                          padding: Padding(top: top, left: left, bottom: bottom, right: right),
                          groups: groups, hasBias: bias)
        var parameters = [Parameter(role: "weight", key: "\(name).weight", shape: conv.weightShape)]
        if bias {
            parameters.append(Parameter(role: "bias", key: "\(name).bias", shape: [out]))
        }
        return add(.conv2d(conv), inputs: [input], shape: [1, out, outHeight, outWidth], parameters: parameters,
                   name: name, layer: layer)
    }

    mutating func batchNorm(_ input: Int, epsilon: Float, name: String, layer: String) -> Int {
        let channels = nodes[input].shape[1]
        let parameters = [
            Parameter(role: "weight", key: "\(name).weight", shape: [channels]),
            Parameter(role: "bias", key: "\(name).bias", shape: [channels]),
            Parameter(role: "running_mean", key: "\(name).running_mean", shape: [channels], trainable: false),
            Parameter(role: "running_var", key: "\(name).running_var", shape: [channels], trainable: false),
        ]
        return add(.batchNorm(epsilon: epsilon), inputs: [input], shape: nodes[input].shape, parameters: parameters,
                   name: name, layer: layer)
    }

    /// Adds an activation node, or returns `input` unchanged for `identity`.
    mutating func activation(_ input: Int, _ kind: Activation, name: String, layer: String) -> Int {
        guard kind != .identity else { return input }
        return add(.activation(kind), inputs: [input], shape: nodes[input].shape, name: name, layer: layer)
    }
}

/// Returns the padding before and after, and the output size, of a convolution along one axis.
func padAmounts(size: Int, kernel: Int, stride: Int, mode: PaddingMode) -> (before: Int, after: Int, output: Int) {
    switch mode {
    case .symmetric:
        let pad = (kernel - 1) / 2
        return (pad, pad, (size + 2 * pad - kernel) / stride + 1)
    case .same:
        let output = (size + stride - 1) / stride
        let total = max((output - 1) * stride + kernel - size, 0)
        return (total / 2, total - total / 2, output)
    }
}
