/// Per-shape C kernels: one `static void` function per distinct op and shape, with every bound,
/// stride and offset a literal. Kernels with identical text are emitted once and shared.
///
/// Kernel arguments come in a fixed order: the op's inputs, its parameters (in the node's
/// parameter order), its scratch area, then the output `y`.

/// The storage of one value in the generated code. Feature maps are `[H][W][C]` (NHWC), except
/// the network input, which stays in the caller's layout. Vectors `[1, N]` are N floats.
struct CTensor {
    var channels: Int
    var height: Int
    var width: Int
    var layout: TensorLayout

    init(shape: [Int], layout: TensorLayout) {
        if shape.count == 4 {
            channels = shape[1]
            height = shape[2]
            width = shape[3]
        } else {
            channels = shape.dropFirst().reduce(1, *)
            height = 1
            width = 1
        }
        self.layout = layout
    }

    var pixels: Int { height * width }
    var count: Int { channels * pixels }

    /// True when channels are innermost in memory, so NHWC kernels can read it.
    var isChannelsLast: Bool { layout == .nhwc || pixels == 1 || channels == 1 }

    /// Returns the C index of channel `channel` of pixel `pixel` (= y · W + x).
    func index(pixel: String, channel: String) -> String {
        if isChannelsLast {
            return CExpression.sum([CExpression.times(pixel, channels), channel])
        }
        return CExpression.sum([CExpression.times(channel, pixels), pixel])
    }

    func index(y: String, x: String, channel: String) -> String {
        index(pixel: CExpression.sum([CExpression.times(y, width), x]), channel: channel)
    }

    /// `HxWxC` in kernel names, or `nchwCxHxW` for a channel-planar input.
    var label: String {
        isChannelsLast ? "\(height)x\(width)x\(channels)" : "nchw\(channels)x\(height)x\(width)"
    }
}

/// The kernels and helpers one generated file needs, in first-use order.
struct CKernelLibrary {
    private(set) var definitions: [String] = []
    private(set) var helpers: Set<CHelper> = []
    /// True when a kernel calls `sqrt` from <math.h>.
    var needsMath = false
    private var textByName: [String: String] = [:]

    mutating func use(_ helper: CHelper) {
        helpers.insert(helper)
        for dependency in helper.dependencies { use(dependency) }
    }

    /// Adds a kernel and returns the name to call it by. A kernel whose text equals an existing
    /// one reuses it; a different kernel under a taken name gets a numeric suffix.
    mutating func define(name: String, summary: String, parameters: [String], body: CWriter) -> String {
        var suffix = 1
        while true {
            let candidate = suffix == 1 ? name : "\(name)_\(suffix)"
            let text = render(name: candidate, summary: summary, parameters: parameters, body: body)
            if let existing = textByName[candidate] {
                if existing == text { return candidate }
                suffix += 1
                continue
            }
            textByName[candidate] = text
            definitions.append(text)
            return candidate
        }
    }

    /// Adds the text of a shared inline helper under `name` unless a helper of that name exists.
    /// The caller defines a helper before the first kernel that calls it.
    mutating func defineHelper(name: String, text: String) {
        guard textByName[name] == nil else { return }
        textByName[name] = text
        definitions.append(text)
    }

    private func render(name: String, summary: String, parameters: [String], body: CWriter) -> String {
        var lines = ["/* \(summary) */"]
        var signature = "static void \(name)("
        let indent = String(repeating: " ", count: signature.count)
        for (index, parameter) in parameters.enumerated() {
            let piece = parameter + (index == parameters.count - 1 ? ")" : ",")
            if signature.count + piece.count + 1 > 110 && !signature.hasSuffix("(") {
                lines.append(signature)
                signature = indent + piece
            } else {
                signature += (signature.hasSuffix("(") ? "" : " ") + piece
            }
        }
        lines.append(signature)
        lines.append("{")
        lines.append(contentsOf: body.lines.map { $0.isEmpty || $0.hasPrefix("#") ? $0 : "    " + $0 })
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }
}

/// A run of equal tiles along one dimension: a loop over whole tiles, or one partial tile.
struct TileSegment {
    var variable: String
    /// The first index: the loop variable, or a literal for the partial tile.
    var start: String
    /// Indices per tile.
    var count: Int
    /// One past the last index the loop covers.
    var end: Int
    var isLoop: Bool
}

/// Splits `0..<extent` into a loop over whole tiles of `step` and a partial tile at the end.
func tileSegments(variable: String, extent: Int, step: Int) -> [TileSegment] {
    let whole = extent - extent % step
    var segments: [TileSegment] = []
    if whole > step {
        segments.append(TileSegment(variable: variable, start: variable, count: step, end: whole, isLoop: true))
    } else if whole == step {
        segments.append(TileSegment(variable: variable, start: "0", count: step, end: whole, isLoop: false))
    }
    if whole < extent {
        segments.append(TileSegment(variable: variable, start: String(whole), count: extent - whole, end: extent, isLoop: false))
    }
    return segments
}

func activationSuffix(_ activation: Activation) -> String {
    activation == .identity ? "" : "_\(activation.rawValue)"
}

func paddingLabel(_ padding: Padding) -> String {
    if padding.top == padding.bottom && padding.left == padding.right && padding.top == padding.left {
        return "p\(padding.top)"
    }
    return "p\(padding.top)_\(padding.left)_\(padding.bottom)_\(padding.right)"
}

func strideLabel(_ conv: Conv2D) -> String {
    conv.strideHeight == conv.strideWidth ? "s\(conv.strideHeight)" : "s\(conv.strideHeight)x\(conv.strideWidth)"
}

let inputParameter = "const float *restrict x"
let outputParameter = "float *restrict y"

func constParameter(_ name: String) -> String { "const float *restrict \(name)" }

extension CKernelLibrary {
    /// Defines the kernel of a convolution and returns its name. The packed forms on NHWC data
    /// take the pointwise GEMM and the depthwise kernel, other packed forms with groups 1 (the
    /// first layer) the pixel-blocked kernel, and everything else direct loops.
    /// Arguments: x, w, [bias], [residual], y.
    mutating func convolution(_ conv: Conv2D, weightLayout layout: WeightLayout, input: CTensor, output: CTensor,
                              residual: CTensor?) -> String {
        let channelsLast = input.isChannelsLast && (residual?.isChannelsLast ?? true)
        let unpadded = conv.padding == Padding(top: 0, left: 0, bottom: 0, right: 0)
        if conv.isPointwise && conv.strideHeight == 1 && conv.strideWidth == 1 && unpadded && layout == .inputOutputPanels && channelsLast {
            return pointwiseConvolution(input: input, outputChannels: conv.outChannels, hasBias: conv.hasBias,
                                        activation: conv.activation, hasResidual: conv.hasResidual)
        } else if conv.isDepthwise && layout == .depthwiseHWC && channelsLast {
            return depthwiseConvolution(conv, input: input, output: output, hasResidual: conv.hasResidual)
        } else if conv.groups == 1 && (layout == .hwio || layout == .inputOutput) && (residual?.isChannelsLast ?? true) {
            return convolutionByPixels(conv, input: input, output: output, hasResidual: conv.hasResidual)
        }
        return directConvolution(conv, weightLayout: layout, input: input, output: output, residual: residual)
    }

    /// Defines the kernel of a 1×1, stride-1, unpadded convolution on NHWC input with
    /// `io_panels` weights: a GEMM `y[P][N] = x[P][K] · w[K][N]` tiled into register blocks,
    /// with bias, activation and residual in the tile's epilogue. Arguments: x, w, [bias],
    /// [residual], y.
    mutating func pointwiseConvolution(input: CTensor, outputChannels: Int, hasBias: Bool,
                                       activation: Activation, hasResidual: Bool) -> String {
        use(.pointwiseTile)
        let pixels = input.pixels, inputChannels = input.channels
        var body = CWriter()
        emitPointwiseGEMM(&body, pixels: pixels, inputChannels: inputChannels, outputChannels: outputChannels, x: "x",
                          weights: "w", bias: hasBias ? "bias" : nil, residual: hasResidual ? "residual" : nil, y: "y",
                          activation: activation)

        let name = "pointwise_f32_\(input.label)_to_\(outputChannels)" + activationSuffix(activation)
            + (hasResidual ? "_residual" : "") + (hasBias ? "" : "_nobias")
        var parameters = [inputParameter, constParameter("w")]
        if hasBias { parameters.append(constParameter("bias")) }
        if hasResidual { parameters.append(constParameter("residual")) }
        parameters.append(outputParameter)
        let summary = "1x1 convolution as a GEMM: y[\(pixels)][\(outputChannels)] = x[\(pixels)][\(inputChannels)]"
            + " * w[\(inputChannels)][\(outputChannels)] in \(weightPanelWidth)-column panels"
            + epilogueDescription(hasBias: hasBias, activation: activation, hasResidual: hasResidual)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Defines the kernel of a convolution with groups 1 and `hwio` (or `io`) weights, on
    /// either input layout. Output pixels go in blocks of 16 where the whole window lies inside
    /// the input horizontally and one at a time at the borders, vectorized over output
    /// channels. Arguments: x, w, [bias], [residual], y.
    mutating func convolutionByPixels(_ conv: Conv2D, input: CTensor, output: CTensor, hasResidual: Bool) -> String {
        let kh = conv.kernelHeight, kw = conv.kernelWidth, outChannels = conv.outChannels
        var body = CWriter()
        body.openFor("oy", to: output.height)
        let rowOffset = CExpression.times("oy", output.width * outChannels)
        emitConvolutionRow(&body, conv, input: input, outputWidth: output.width, row: "oy", weights: "w",
                           bias: conv.hasBias ? "bias" : nil, residual: hasResidual ? CExpression.offset("residual", rowOffset) : nil,
                           output: CExpression.offset("y", rowOffset))
        body.close()

        let name = "conv\(kh)x\(kw)_\(strideLabel(conv))_f32_\(input.label)_to_\(outChannels)_\(paddingLabel(conv.padding))"
            + activationSuffix(conv.activation) + (hasResidual ? "_residual" : "") + (conv.hasBias ? "" : "_nobias")
        var parameters = [inputParameter, constParameter("w")]
        if conv.hasBias { parameters.append(constParameter("bias")) }
        if hasResidual { parameters.append(constParameter("residual")) }
        parameters.append(outputParameter)
        let summary = "\(kh)x\(kw) convolution, stride \(conv.strideHeight)x\(conv.strideWidth), padding \(conv.padding):"
            + " \(input.label) -> \(output.label), w[\(kh)][\(kw)][\(conv.inChannels)][\(outChannels)]"
            + epilogueDescription(hasBias: conv.hasBias, activation: conv.activation, hasResidual: hasResidual)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Writes one output row `row` (a C expression) of a convolution with groups 1 and `hwio`
    /// (or `io`) weights reading `x`, vectorized over output channels. Pixels go in blocks of 16
    /// where the whole window lies inside the input horizontally, and one at a time at the
    /// borders. Rows whose window lies inside the input vertically pass literal tap bounds, so
    /// the compiler unrolls their taps. `output` and `residual` point at the row's first pixel (NHWC).
    mutating func emitConvolutionRow(_ body: inout CWriter, _ conv: Conv2D, input: CTensor, outputWidth: Int, row: String,
                                     weights: String, bias: String?, residual: String?, output: String) {
        use(.convolutionPixels)
        let kh = conv.kernelHeight, kw = conv.kernelWidth, sw = conv.strideWidth
        let outChannels = conv.outChannels
        let (rowStride, columnStride, channelStride) = input.isChannelsLast
            ? (input.width * input.channels, input.channels, 1)
            : (input.width, 1, input.pixels)
        // Output columns [first, end) read only columns inside the input.
        let first = min((conv.padding.left + sw - 1) / sw, outputWidth)
        let reach = input.width + conv.padding.left - kw
        let end = reach < 0 ? first : max(first, min(reach / sw + 1, outputWidth))
        let block = 16

        func call(_ ox: String, pixels: Int, taps: String, columns: String) {
            let column = CExpression.sum([CExpression.times(ox, sw), String(-conv.padding.left)])
            let offset = CExpression.sum([CExpression.times("iy0", rowStride), CExpression.times(CExpression.parenthesized(column), columnStride)])
            let outputOffset = CExpression.times(ox, outChannels)
            let arguments = [
                "x", weights, bias ?? "NULL", residual.map { CExpression.offset($0, outputOffset) } ?? "NULL",
                CExpression.offset(output, outputOffset),
                "\(pixels)", "\(sw * columnStride)", "\(conv.inChannels)", "\(outChannels)", "\(kw)",
                "\(rowStride)", "\(columnStride)", "\(channelStride)", offset, taps, columns,
                bias != nil ? "1" : "0", residual != nil ? "1" : "0", activationConstant(conv.activation),
            ]
            body.line("convolution_f32_pixels(\(arguments.joined(separator: ", ")));")
        }
        func border(from start: Int, to stop: Int, taps: String) {
            guard stop > start else { return }
            body.openFor("ox", from: start, to: stop)
            body.line("const int ix0 = \(CExpression.sum([CExpression.times("ox", sw), String(-conv.padding.left)]));")
            body.line("const int kx0 = ix0 < 0 ? -ix0 : 0;")
            body.line("const int kx1 = ix0 + \(kw) > \(input.width) ? \(input.width) - ix0 : \(kw);")
            call("ox", pixels: 1, taps: taps, columns: "kx0, kx1")
            body.close()
        }
        func pixels(taps: String) {
            border(from: 0, to: first, taps: taps)
            let blocksEnd = first + (end - first) / block * block
            if blocksEnd > first {
                body.openFor("ox", from: first, to: blocksEnd, step: block)
                call("ox", pixels: block, taps: taps, columns: "0, \(kw)")
                body.close()
            }
            if end > blocksEnd {
                call(String(blocksEnd), pixels: end - blocksEnd, taps: taps, columns: "0, \(kw)")
            }
            border(from: end, to: outputWidth, taps: taps)
        }

        body.open("")
        body.line("const int iy0 = \(CExpression.sum([CExpression.times(row, conv.strideHeight), String(-conv.padding.top)]));")
        body.line("const int ky0 = iy0 < 0 ? -iy0 : 0;")
        body.line("const int ky1 = iy0 + \(kh) > \(input.height) ? \(input.height) - iy0 : \(kh);")
        body.open("if (ky0 == 0 && ky1 == \(kh))")
        pixels(taps: "0, \(kh)")
        body.openElse()
        pixels(taps: "ky0, ky1")
        body.close()
        body.close()
    }

    /// Defines the kernel of any convolution, by direct loops. For each output pixel, the
    /// output row accumulates every tap and input channel, vectorized over output channels
    /// when the weights are `hwio` (or `io`/`hwc`, its special cases). The input may be in
    /// either layout. Arguments: x, w, [bias], [residual], y.
    mutating func directConvolution(_ conv: Conv2D, weightLayout: WeightLayout, input: CTensor, output: CTensor,
                                    residual: CTensor?) -> String {
        use(.activation)
        let kh = conv.kernelHeight, kw = conv.kernelWidth
        let groupInputs = conv.inChannels / conv.groups, groupOutputs = conv.outChannels / conv.groups
        let outChannels = conv.outChannels
        var body = CWriter()
        body.openFor("oy", to: output.height)
        body.openFor("ox", to: output.width)
        body.line("float *restrict yp = y + \(CExpression.times("oy * \(output.width) + ox", outChannels));")
        body.openFor("o", to: outChannels)
        body.line("yp[o] = \(conv.hasBias ? "bias[o]" : "0.0f");")
        body.close()

        // A bounds check is needed only on a side where the window can leave the input.
        body.openFor("ky", to: kh)
        body.line("const int iy = \(CExpression.sum([CExpression.times("oy", conv.strideHeight), String(-conv.padding.top), "ky"]));")
        let lastRow = (output.height - 1) * conv.strideHeight - conv.padding.top + kh - 1
        var rowChecks: [String] = []
        if conv.padding.top > 0 { rowChecks.append("iy < 0") }
        if lastRow >= input.height { rowChecks.append("iy >= \(input.height)") }
        if !rowChecks.isEmpty { body.line("if (\(rowChecks.joined(separator: " || "))) continue;") }
        body.openFor("kx", to: kw)
        body.line("const int ix = \(CExpression.sum([CExpression.times("ox", conv.strideWidth), String(-conv.padding.left), "kx"]));")
        let lastColumn = (output.width - 1) * conv.strideWidth - conv.padding.left + kw - 1
        var columnChecks: [String] = []
        if conv.padding.left > 0 { columnChecks.append("ix < 0") }
        if lastColumn >= input.width { columnChecks.append("ix >= \(input.width)") }
        if !columnChecks.isEmpty { body.line("if (\(columnChecks.joined(separator: " || "))) continue;") }

        let group = conv.groups > 1 ? "g" : "0"
        if conv.groups > 1 { body.openFor("g", to: conv.groups) }
        body.openFor("i", to: groupInputs)
        let channel = CExpression.sum([CExpression.times(group, groupInputs), "i"])
        body.line("const float xv = x[\(input.index(y: "iy", x: "ix", channel: channel))];")
        let outputChannel = CExpression.sum([CExpression.times(group, groupOutputs), "o"])
        let weightIndex: String
        switch weightLayout {
        case .pytorch:
            // [out][in / groups][kh][kw]
            let row = CExpression.sum([CExpression.times(outputChannel, groupInputs), "i"])
            weightIndex = CExpression.sum([CExpression.times(CExpression.sum([CExpression.times(row, kh), "ky"]), kw), "kx"])
        case .hwio, .inputOutput, .depthwiseHWC:
            // [kh][kw][in / groups][out]; `io` is the 1×1 case and `hwc` the one-input-per-group case.
            let tap = CExpression.sum([CExpression.times("ky", kw), "kx"])
            weightIndex = CExpression.sum([CExpression.times(CExpression.sum([CExpression.times(tap, groupInputs), "i"]), outChannels), outputChannel])
        case .inputOutputPanels:
            // A 1×1 kernel with groups 1: column o of row i lies in the panel that starts at
            // column o - o % 32, whose rows are 32 floats wide, or N % 32 for a last, narrower panel.
            let panel = weightPanelWidth, last = outChannels - outChannels % panel
            let width = outChannels % panel == 0 ? "\(panel)" : "(o < \(last) ? \(panel) : \(outChannels - last))"
            weightIndex = "(o - o % \(panel)) * \(groupInputs) + i * \(width) + o % \(panel)"
        }
        body.openFor("o", to: groupOutputs)
        body.line("yp[\(outputChannel)] += xv * w[\(weightIndex)];")
        body.close()
        body.close()
        if conv.groups > 1 { body.close() }
        body.close()
        body.close()

        body.openFor("o", to: outChannels)
        if let residual {
            let residualIndex = residual.index(pixel: "oy * \(output.width) + ox", channel: "o")
            body.line("yp[o] = activate_f32(yp[o], \(activationConstant(conv.activation))) + residual[\(residualIndex)];")
        } else {
            body.line("yp[o] = activate_f32(yp[o], \(activationConstant(conv.activation)));")
        }
        body.close()
        body.close()
        body.close()

        let groupLabel = conv.groups > 1 ? "_g\(conv.groups)" : ""
        let name = "conv\(kh)x\(kw)_\(strideLabel(conv))_f32_direct_\(input.label)_to_\(outChannels)\(groupLabel)"
            + "_\(weightLayout.rawValue)_\(paddingLabel(conv.padding))" + activationSuffix(conv.activation)
            + (residual != nil ? "_residual" : "") + (conv.hasBias ? "" : "_nobias")
        var parameters = [inputParameter, constParameter("w")]
        if conv.hasBias { parameters.append(constParameter("bias")) }
        if residual != nil { parameters.append(constParameter("residual")) }
        parameters.append(outputParameter)
        let summary = "\(kh)x\(kw) convolution by direct loops, stride \(conv.strideHeight)x\(conv.strideWidth), padding \(conv.padding),"
            + " groups \(conv.groups): \(input.label) -> \(output.label), \(weightLayout.rawValue) weights"
            + epilogueDescription(hasBias: conv.hasBias, activation: conv.activation, hasResidual: residual != nil)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Defines the kernel of inference BatchNorm. It computes
    /// `scale[c] = weight[c] / sqrt(running_var[c] + epsilon)` in double into the scratch area,
    /// then `y = (x - running_mean) * scale + bias`.
    /// Arguments: x, weight, bias, running_mean, running_var, scratch (C floats), y.
    mutating func batchNorm(epsilon: Float, input: CTensor, output: CTensor) -> String {
        needsMath = true
        let channels = input.channels
        var body = CWriter()
        body.openFor("c", to: channels)
        body.line("scale[c] = (float)((double)gamma[c] / sqrt((double)variance[c] + (double)\(CExpression.float(epsilon))));")
        body.close()
        body.openFor("p", to: input.pixels)
        body.openFor("c", to: channels)
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = (x[\(input.index(pixel: "p", channel: "c"))] - mean[c]) * scale[c] + beta[c];")
        body.close()
        body.close()
        let parameters = [inputParameter, constParameter("gamma"), constParameter("beta"), constParameter("mean"),
                          constParameter("variance"), "float *restrict scale", outputParameter]
        let summary = "inference BatchNorm, epsilon \(epsilon): \(input.label) -> \(output.label)"
        return define(name: "batchnorm_f32_\(input.label)", summary: summary, parameters: parameters, body: body)
    }

    /// Defines the kernel of an element-wise activation. Arguments: x, y.
    mutating func activation(_ activation: Activation, input: CTensor, output: CTensor) -> String {
        use(.activation)
        var body = CWriter()
        elementwise(&body, inputs: [input], output: output) { values in
            "activate_f32(\(values[0]), \(activationConstant(activation)))"
        }
        return define(name: "\(activation.rawValue)_f32_\(input.label)", summary: "\(activation.rawValue): \(input.label) -> \(output.label)",
                      parameters: [inputParameter, outputParameter], body: body)
    }

    /// Defines the kernel of the element-wise sum of two values. Arguments: a, b, y.
    mutating func add(_ lhs: CTensor, _ rhs: CTensor, output: CTensor) -> String {
        var body = CWriter()
        elementwise(&body, inputs: [lhs, rhs], output: output, names: ["a", "b"]) { values in "\(values[0]) + \(values[1])" }
        let name = "add_f32_\(lhs.label)" + (lhs.label == rhs.label ? "" : "_\(rhs.label)")
        return define(name: name, summary: "element-wise sum: \(lhs.label) + \(rhs.label) -> \(output.label)",
                      parameters: [constParameter("a"), constParameter("b"), outputParameter], body: body)
    }

    /// Defines the kernel of `y = x * scale[c]`, one scale per channel. Arguments: x, scale, y.
    mutating func channelScale(input: CTensor, output: CTensor) -> String {
        var body = CWriter()
        body.openFor("p", to: input.pixels)
        body.openFor("c", to: input.channels)
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = x[\(input.index(pixel: "p", channel: "c"))] * scale[c];")
        body.close()
        body.close()
        return define(name: "channel_scale_f32_\(input.label)", summary: "per-channel scale: \(input.label) * scale[\(input.channels)]",
                      parameters: [inputParameter, constParameter("scale"), outputParameter], body: body)
    }

    /// Defines the kernel of the mean over H and W, per channel. Arguments: x, y (C floats).
    mutating func globalAveragePool(input: CTensor) -> String {
        var body = CWriter()
        averagePool(&body, input: input, into: "y")
        return define(name: "global_avgpool_f32_\(input.label)", summary: "global average pool: \(input.label) -> \(input.channels)",
                      parameters: [inputParameter, outputParameter], body: body)
    }

    /// Defines the kernel of a fully connected layer with PyTorch-order `[out][in]` weights.
    /// Arguments: x, w, [bias], y.
    mutating func linear(_ linear: Linear) -> String {
        use(.matrixVector)
        var body = CWriter()
        body.line("matrix_vector_f32(x, w, \(linear.hasBias ? "bias" : "NULL"), y, \(linear.outFeatures), \(linear.inFeatures), "
                  + "\(linear.hasBias ? 1 : 0), \(activationConstant(linear.activation)));")
        var parameters = [inputParameter, constParameter("w")]
        if linear.hasBias { parameters.append(constParameter("bias")) }
        parameters.append(outputParameter)
        let name = "linear_f32_\(linear.inFeatures)_to_\(linear.outFeatures)" + activationSuffix(linear.activation)
            + (linear.hasBias ? "" : "_nobias")
        let summary = "fully connected: y[\(linear.outFeatures)] = w[\(linear.outFeatures)][\(linear.inFeatures)] * x[\(linear.inFeatures)]"
            + epilogueDescription(hasBias: linear.hasBias, activation: linear.activation, hasResidual: false)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Returns the scratch floats a fused squeeze-excite needs: channel means, the squeezed vector and
    /// the gate, each starting on a 64-byte boundary.
    static func squeezeExciteScratchFloats(_ se: SqueezeExcite) -> (hidden: Int, gate: Int, total: Int) {
        let hidden = align(se.channels, 16)
        let gate = hidden + align(se.squeezeChannels, 16)
        return (hidden, gate, gate + align(se.channels, 16))
    }

    /// Defines the kernel of a fused squeeze-excitation block: channel means, fc1 and its
    /// activation, fc2 and the gate, then `y = x * gate[c]` into the output buffer (never in
    /// place). Arguments: x, fc1 weight, fc1 bias, fc2 weight, fc2 bias, scratch, y.
    mutating func squeezeExcite(_ se: SqueezeExcite, input: CTensor, output: CTensor) -> String {
        use(.matrixVector)
        let scratch = CKernelLibrary.squeezeExciteScratchFloats(se)
        var body = CWriter()
        body.line("float *restrict pooled = scratch;")
        body.line("float *restrict hidden = scratch + \(scratch.hidden);")
        body.line("float *restrict gate = scratch + \(scratch.gate);")
        averagePool(&body, input: input, into: "pooled")
        body.line("matrix_vector_f32(pooled, fc1_weight, fc1_bias, hidden, \(se.squeezeChannels), \(se.channels), 1, \(activationConstant(se.activation)));")
        body.line("matrix_vector_f32(hidden, fc2_weight, fc2_bias, gate, \(se.channels), \(se.squeezeChannels), 1, \(activationConstant(se.gate)));")
        body.openFor("p", to: input.pixels)
        body.openFor("c", to: input.channels)
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = x[\(input.index(pixel: "p", channel: "c"))] * gate[c];")
        body.close()
        body.close()
        let parameters = [inputParameter, constParameter("fc1_weight"), constParameter("fc1_bias"), constParameter("fc2_weight"),
                          constParameter("fc2_bias"), "float *restrict scratch", outputParameter]
        let name = "squeeze_excite_f32_\(input.label)_s\(se.squeezeChannels)_\(se.activation.rawValue)_\(se.gate.rawValue)"
        let summary = "squeeze-excite: x * \(se.gate.rawValue)(fc2(\(se.activation.rawValue)(fc1(mean_hw(x))))),"
            + " \(input.label), \(se.channels) -> \(se.squeezeChannels) -> \(se.channels)"
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    private func averagePool(_ body: inout CWriter, input: CTensor, into target: String) {
        body.openFor("c", to: input.channels)
        body.line("\(target)[c] = 0.0f;")
        body.close()
        body.openFor("p", to: input.pixels)
        body.openFor("c", to: input.channels)
        body.line("\(target)[c] += x[\(input.index(pixel: "p", channel: "c"))];")
        body.close()
        body.close()
        body.openFor("c", to: input.channels)
        body.line("\(target)[c] /= \(CExpression.float(Float(input.pixels)));")
        body.close()
    }

    /// Writes `y[i] = expression(inputs[i])`: one flat loop when every operand is channels-last,
    /// else pixel and channel loops with each operand's own index.
    private func elementwise(_ body: inout CWriter, inputs: [CTensor], output: CTensor, names: [String] = ["x"],
                             expression: ([String]) -> String) {
        if inputs.allSatisfy(\.isChannelsLast) {
            body.openFor("i", to: output.count)
            body.line("y[i] = \(expression(names.map { "\($0)[i]" }));")
            body.close()
            return
        }
        body.openFor("p", to: output.pixels)
        body.openFor("c", to: output.channels)
        let values = zip(names, inputs).map { name, tensor in "\(name)[\(tensor.index(pixel: "p", channel: "c"))]" }
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = \(expression(values));")
        body.close()
        body.close()
    }
}

/// Writes a GEMM `y[P][N] = activation(x[P][K] · w[K][N] + bias) + residual` over `io_panels`
/// weights, with one branch per instruction-set tier. `x`, `weights`, `bias`, `residual` and `y`
/// are C pointer expressions; x rows are K floats apart, y and residual rows N floats apart.
/// With `channelList`, the sums run over the input channels in `list[0 ..< count]` (a C array
/// and an int expression) only: the tile kernels' `ks` and `k_used` arguments.
func emitPointwiseGEMM(_ body: inout CWriter, pixels: Int, inputChannels: Int, outputChannels: Int, x: String, weights: String,
                       bias: String?, residual: String?, y: String, activation: Activation,
                       channelList: ChannelList? = nil) {
    emitTiers(&body) { body, tile in
        emitPointwiseGEMM(&body, tile: tile, pixels: pixels, inputChannels: inputChannels, outputChannels: outputChannels,
                          x: x, weights: weights, bias: bias, residual: residual, y: y, activation: activation,
                          channelList: channelList)
    }
}

/// The input channels that a GEMM sums over, as C expressions: an `int` array and the number of
/// entries used. The tile kernels take them as `ks` and `k_used`.
struct ChannelList {
    var list: String
    var count: String

    /// Returns the `ks` and `k_used` arguments of a tile call: all `inputChannels` channels without a list.
    static func arguments(_ channelList: ChannelList?, inputChannels: Int) -> [String] {
        channelList.map { [$0.list, $0.count] } ?? ["NULL", "\(inputChannels)"]
    }

    /// Writes the call of `nonzero_channels_f32` (`CHelper.nonzeroChannels`, which the caller
    /// uses) that lists the channels of `pixels` rows of `x` that are not zero in every row, and
    /// returns the list. When every channel is in it, the list is NULL and the tiles run their
    /// plain loop. `x` and `pixels` are C expressions.
    static func emitNonzero(_ body: inout CWriter, x: String, pixels: String, channels: Int) -> ChannelList {
        body.line("int used_channels[\(channels)];")
        body.line("const int used_count = nonzero_channels_f32(\(x), \(pixels), \(channels), used_channels);")
        return ChannelList(list: "(used_count < \(channels) ? used_channels : NULL)", count: "used_count")
    }
}

/// Writes one `#if`/`#elif`/`#else` branch per instruction-set tier of the GEMM tiles, each
/// with the code that `emit` writes for that tier's tile shape.
func emitTiers(_ body: inout CWriter, _ emit: (inout CWriter, PointwiseTileShape) -> Void) {
    for (position, tile) in pointwiseTileShapes.enumerated() {
        if position == 0 {
            body.directive("#if \(tile.condition)")
        } else if tile.condition.isEmpty {
            body.directive("#else")
        } else {
            body.directive("#elif \(tile.condition)")
        }
        emit(&body, tile)
    }
    body.directive("#endif")
}

/// Writes the loops of a GEMM for one instruction-set tier. Each weight panel
/// (`weightPanelWidth` columns) is loaded once and stays in L1 while every row tile of x streams
/// past it, so the weights cross the memory hierarchy once per call.
private func emitPointwiseGEMM(_ body: inout CWriter, tile: PointwiseTileShape, pixels: Int, inputChannels: Int, outputChannels: Int,
                               x: String, weights: String, bias: String?, residual: String?, y: String, activation: Activation,
                               channelList: ChannelList?) {
    let tileRows = tile.rows(forPixels: pixels)
    let rowSegments = tileSegments(variable: "p", extent: pixels, step: tileRows)

    // One panel starting at column `start` (a literal or the loop variable), `width` columns wide.
    func emitPanel(start: String, width: Int) {
        var column = 0
        while column < width {
            let columns = min(tile.columns, width - column)
            let outputColumn = CExpression.sum([start, String(column)])
            let panelOffset = CExpression.sum([CExpression.times(start, inputChannels), String(column)])
            for row in rowSegments {
                if row.isLoop { body.openFor(row.variable, to: row.end, step: row.count) }
                let outputOffset = CExpression.sum([CExpression.times(row.start, outputChannels), outputColumn])
                let arguments = [
                    CExpression.offset(x, CExpression.times(row.start, inputChannels)),
                    CExpression.offset(weights, panelOffset),
                    bias.map { CExpression.offset($0, outputColumn) } ?? "NULL",
                    residual.map { CExpression.offset($0, outputOffset) } ?? "NULL",
                    CExpression.offset(y, outputOffset),
                    "\(row.count)", "\(columns)", "\(inputChannels)", "\(width)", "\(outputChannels)",
                ] + ChannelList.arguments(channelList, inputChannels: inputChannels) + [
                    bias != nil ? "1" : "0", residual != nil ? "1" : "0", activationConstant(activation),
                ]
                body.line("\(tile.function)(\(arguments.joined(separator: ", ")));")
                if row.isLoop { body.close() }
            }
            column += columns
        }
    }

    for panel in tileSegments(variable: "n", extent: outputChannels, step: weightPanelWidth) {
        if panel.isLoop {
            body.openFor(panel.variable, to: panel.end, step: panel.count)
            emitPanel(start: panel.variable, width: panel.count)
            body.close()
        } else {
            emitPanel(start: panel.start, width: panel.count)
        }
    }
}

func epilogueDescription(hasBias: Bool, activation: Activation, hasResidual: Bool) -> String {
    var parts: [String] = []
    if hasBias { parts.append("bias") }
    if activation != .identity { parts.append(activation.rawValue) }
    if hasResidual { parts.append("residual") }
    return parts.isEmpty ? "" : ", then " + parts.joined(separator: ", ")
}
