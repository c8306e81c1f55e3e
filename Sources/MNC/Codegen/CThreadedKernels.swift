/// The kernels of a threaded C build (`mnc compile --threads N`, N > 1).
///
/// A threaded kernel takes the single-thread kernel's arguments and then
/// `const thread_work *work`, and runs parts `[work->first_part, work->end_part)` of its work.
/// The split into N parts is fixed when the code is generated and written into the kernel as
/// `static const int` tables: part p covers units `[table[p], table[p + 1])`. The units are
/// output rows for convolutions, register tiles of rows or column panels for GEMMs (whichever
/// balances better), outputs for fully connected layers and elements or pixels for element-wise
/// kernels. Every output value is computed by exactly one part, with the same arithmetic as in
/// the single-thread kernel, so the threaded results do not depend on the thread count.
///
/// Kernels with too little work to split (global average pooling, an unfused squeeze-excitation,
/// convolutions by direct loops) keep their single-thread form and run on the thread that owns
/// part 0.

/// Returns the bounds of `parts` contiguous parts of `0..<count`: part p is `[b[p], b[p + 1])`,
/// and the part sizes differ by at most one.
func partBounds(_ count: Int, parts: Int) -> [Int] {
    (0...parts).map { count * $0 / parts }
}

let threadWorkParameter = "const thread_work *work"

extension CWriter {
    /// Writes `static const int name[parts + 1] = {...};`, the bounds of the parts.
    mutating func partTable(_ name: String, _ bounds: [Int]) {
        line("static const int \(name)[\(bounds.count)] = {\(bounds.map(String.init).joined(separator: ", "))};")
    }

    /// Opens the loop over the parts that this thread runs; `part` is the part index.
    mutating func openParts() {
        open("for (int part = work->first_part; part < work->end_part; ++part)")
    }
}

/// The dimension of a GEMM that is split between parts: register tiles of rows (pixels) or
/// column panels (output channels).
enum GEMMSplit {
    case rows
    case panels
}

/// Returns the split whose largest part computes the fewest padded multiply-accumulates: rows
/// rounded up to `tileRows`, columns to the tile's width. Ties go to rows.
func chooseGEMMSplit(pixels: Int, outputChannels: Int, tile: PointwiseTileShape, tileRows: Int, parts: Int) -> GEMMSplit {
    let widths = tileSegments(variable: "n", extent: outputChannels, step: weightPanelWidth).flatMap { segment in
        [Int](repeating: segment.count, count: segment.isLoop ? segment.end / segment.count : 1)
    }
    func paddedColumns(_ width: Int) -> Int { (width + tile.columns - 1) / tile.columns * tile.columns }
    let tiles = (pixels + tileRows - 1) / tileRows
    let rowBounds = partBounds(tiles, parts: parts)
    let panelBounds = partBounds(widths.count, parts: parts)
    let allColumns = widths.map(paddedColumns).reduce(0, +)
    let rowCost = (0..<parts).map { (rowBounds[$0 + 1] - rowBounds[$0]) * tileRows }.max() ?? 0
    let panelCost = (0..<parts).map { part in
        widths[panelBounds[part]..<panelBounds[part + 1]].map(paddedColumns).reduce(0, +)
    }.max() ?? 0
    return panelCost * tiles * tileRows < rowCost * allColumns ? .panels : .rows
}

/// The rows of a GEMM that one series of tile calls covers.
private enum GEMMRows {
    /// All `pixels` rows, in tiles of `tileRows` with a literal partial tile, as the
    /// single-thread GEMM.
    case all(pixels: Int, tileRows: Int)
    /// Whole tiles from `start` to `fullEnd` (C expressions), then the partial tile at
    /// `lastStart` with `lastRows` rows when `lastCondition` holds.
    case range(start: String, fullEnd: String, tileRows: Int, lastStart: Int, lastRows: Int, lastCondition: String)
    /// `pixels` rows, a C expression: whole tiles, then a tile of the remaining rows.
    case runtime(pixels: String, tileRows: Int)
}

/// The operands of one GEMM `y[P][N] = activation(x[P][K] · w[K][N] + bias) + residual` as C
/// pointer expressions, with `io_panels` weights.
private struct GEMMOperands {
    var inputChannels: Int
    var outputChannels: Int
    var x: String
    var weights: String
    var bias: String?
    var residual: String?
    var y: String
    var activation: Activation
    var channelList: ChannelList? = nil

    /// Writes the tile calls of the panel starting at column `start`, `width` columns wide.
    func emitPanel(_ body: inout CWriter, tile: PointwiseTileShape, start: String, width: Int, rows: GEMMRows) {
        var column = 0
        while column < width {
            let columns = min(tile.columns, width - column)
            let outputColumn = CExpression.sum([start, String(column)])
            let panelOffset = CExpression.sum([CExpression.times(start, inputChannels), String(column)])
            func call(_ rowStart: String, _ rowCount: String) {
                let outputOffset = CExpression.sum([CExpression.times(rowStart, outputChannels), outputColumn])
                let arguments = [
                    CExpression.offset(x, CExpression.times(rowStart, inputChannels)),
                    CExpression.offset(weights, panelOffset),
                    bias.map { CExpression.offset($0, outputColumn) } ?? "NULL",
                    residual.map { CExpression.offset($0, outputOffset) } ?? "NULL",
                    CExpression.offset(y, outputOffset),
                    rowCount, "\(columns)", "\(inputChannels)", "\(width)", "\(outputChannels)",
                ] + ChannelList.arguments(channelList, inputChannels: inputChannels) + [
                    bias != nil ? "1" : "0", residual != nil ? "1" : "0", activationConstant(activation),
                ]
                body.line("\(tile.function)(\(arguments.joined(separator: ", ")));")
            }
            switch rows {
            case .all(let pixels, let tileRows):
                for segment in tileSegments(variable: "p", extent: pixels, step: tileRows) {
                    if segment.isLoop { body.openFor(segment.variable, to: segment.end, step: segment.count) }
                    call(segment.start, "\(segment.count)")
                    if segment.isLoop { body.close() }
                }
            case .range(let start, let fullEnd, let tileRows, let lastStart, let lastRows, let lastCondition):
                body.open("for (int p = \(start); p < \(fullEnd); p += \(tileRows))")
                call("p", "\(tileRows)")
                body.close()
                if lastRows > 0 {
                    body.open("if (\(lastCondition))")
                    call("\(lastStart)", "\(lastRows)")
                    body.close()
                }
            case .runtime(let pixels, let tileRows):
                body.open("")
                body.line("int p = 0;")
                body.open("for (; p + \(tileRows) <= \(pixels); p += \(tileRows))")
                call("p", "\(tileRows)")
                body.close()
                body.open("if (p < \(pixels))")
                call("p", "\(pixels) - p")
                body.close()
                body.close()
            }
            column += columns
        }
    }

    /// Writes every panel of the GEMM for the given rows.
    func emitAllPanels(_ body: inout CWriter, tile: PointwiseTileShape, rows: GEMMRows) {
        for panel in tileSegments(variable: "n", extent: outputChannels, step: weightPanelWidth) {
            if panel.isLoop {
                body.openFor(panel.variable, to: panel.end, step: panel.count)
                emitPanel(&body, tile: tile, start: panel.variable, width: panel.count, rows: rows)
                body.close()
            } else {
                emitPanel(&body, tile: tile, start: panel.start, width: panel.count, rows: rows)
            }
        }
    }
}

/// Writes a GEMM like `emitPointwiseGEMM`, with its row tiles or its column panels split between
/// the parts: each tier opens its own loop over this thread's parts, in a block that scopes its
/// table. `x`, `weights`, `bias`, `residual` and `y` are C pointer expressions, as for
/// `emitPointwiseGEMM`. With `skipsZeroChannels` (the caller uses `CHelper.nonzeroChannels`),
/// the sums skip the input channels that are zero in every row the part reads. A part of row
/// tiles lists the channels of its own rows, so it does not read the rows another thread wrote.
/// A thread that splits the panels lists them over every row, which it reads anyway.
func emitPartitionedPointwiseGEMM(_ body: inout CWriter, pixels: Int, inputChannels: Int, outputChannels: Int, x: String,
                                  weights: String, bias: String?, residual: String?, y: String, activation: Activation,
                                  parts: Int, skipsZeroChannels: Bool = false) {
    var operands = GEMMOperands(inputChannels: inputChannels, outputChannels: outputChannels, x: x, weights: weights,
                                bias: bias, residual: residual, y: y, activation: activation)
    emitTiers(&body) { body, tile in
        let tileRows = tile.rows(forPixels: pixels)
        body.open("")
        defer { body.close() }
        switch chooseGEMMSplit(pixels: pixels, outputChannels: outputChannels, tile: tile, tileRows: tileRows, parts: parts) {
        case .rows:
            let fullTiles = pixels / tileRows, lastRows = pixels % tileRows
            body.partTable("tiles", partBounds(fullTiles + (lastRows > 0 ? 1 : 0), parts: parts))
            body.openParts()
            body.line("const int row_end = (tiles[part + 1] < \(fullTiles) ? tiles[part + 1] : \(fullTiles)) * \(tileRows);")
            if skipsZeroChannels {
                body.line("const int part_start = tiles[part] * \(tileRows);")
                body.line("const int part_end = tiles[part + 1] > \(fullTiles) ? \(pixels) : row_end;")
                operands.channelList = ChannelList.emitNonzero(&body, x: CExpression.offset(x, "part_start * \(inputChannels)"),
                                                               pixels: "part_end - part_start", channels: inputChannels)
            }
            let rows = GEMMRows.range(start: "tiles[part] * \(tileRows)", fullEnd: "row_end", tileRows: tileRows,
                                      lastStart: fullTiles * tileRows, lastRows: lastRows, lastCondition: "tiles[part + 1] > \(fullTiles)")
            operands.emitAllPanels(&body, tile: tile, rows: rows)
            body.close()
        case .panels:
            let panel = weightPanelWidth
            let wholePanels = outputChannels / panel, lastWidth = outputChannels % panel
            body.partTable("panels", partBounds(wholePanels + (lastWidth > 0 ? 1 : 0), parts: parts))
            if skipsZeroChannels {
                operands.channelList = ChannelList.emitNonzero(&body, x: x, pixels: String(pixels), channels: inputChannels)
            }
            body.openParts()
            let rows = GEMMRows.all(pixels: pixels, tileRows: tileRows)
            if wholePanels > 0 {
                body.line("const int panel_end = (panels[part + 1] < \(wholePanels) ? panels[part + 1] : \(wholePanels)) * \(panel);")
                body.open("for (int n = panels[part] * \(panel); n < panel_end; n += \(panel))")
                operands.emitPanel(&body, tile: tile, start: "n", width: panel, rows: rows)
                body.close()
            }
            if lastWidth > 0 {
                body.open("if (panels[part + 1] > \(wholePanels))")
                operands.emitPanel(&body, tile: tile, start: "\(wholePanels * panel)", width: lastWidth, rows: rows)
                body.close()
            }
            body.close()
        }
    }
}

/// Writes a GEMM over `pixels` rows, a C expression evaluated once: whole register tiles, then
/// one tile of the remaining rows. Used where a thread's share of a fused block leaves a band or
/// chunk whose row count is known only at run time.
func emitRuntimePointwiseGEMM(_ body: inout CWriter, pixels: String, inputChannels: Int, outputChannels: Int, x: String,
                              weights: String, bias: String?, residual: String?, y: String, activation: Activation,
                              channelList: ChannelList? = nil) {
    let operands = GEMMOperands(inputChannels: inputChannels, outputChannels: outputChannels, x: x, weights: weights,
                                bias: bias, residual: residual, y: y, activation: activation, channelList: channelList)
    emitTiers(&body) { body, tile in
        operands.emitAllPanels(&body, tile: tile, rows: .runtime(pixels: pixels, tileRows: tile.rows))
    }
}

/// A threaded kernel's name and whether it is split: a split kernel takes `work` as its last
/// argument, and an unsplit one runs on the thread that owns part 0.
struct ThreadedKernel {
    var name: String
    var isSplit: Bool
}

extension CKernelLibrary {
    /// Defines the threaded kernel of a convolution, with the same choice of form as
    /// `convolution`. Convolutions by direct loops stay unsplit.
    mutating func threadedConvolution(_ conv: Conv2D, weightLayout layout: WeightLayout, input: CTensor, output: CTensor,
                                      residual: CTensor?, parts: Int) -> ThreadedKernel {
        let channelsLast = input.isChannelsLast && (residual?.isChannelsLast ?? true)
        let unpadded = conv.padding == Padding(top: 0, left: 0, bottom: 0, right: 0)
        if conv.isPointwise && conv.strideHeight == 1 && conv.strideWidth == 1 && unpadded && layout == .inputOutputPanels && channelsLast {
            return ThreadedKernel(name: threadedPointwiseConvolution(input: input, outputChannels: conv.outChannels, hasBias: conv.hasBias,
                                                                     activation: conv.activation, hasResidual: conv.hasResidual, parts: parts),
                                  isSplit: true)
        } else if conv.isDepthwise && layout == .depthwiseHWC && channelsLast {
            return ThreadedKernel(name: threadedDepthwiseConvolution(conv, input: input, output: output, hasResidual: conv.hasResidual,
                                                                     parts: parts),
                                  isSplit: true)
        } else if conv.groups == 1 && (layout == .hwio || layout == .inputOutput) && (residual?.isChannelsLast ?? true) {
            return ThreadedKernel(name: threadedConvolutionByPixels(conv, input: input, output: output, hasResidual: conv.hasResidual,
                                                                    parts: parts),
                                  isSplit: true)
        }
        return ThreadedKernel(name: directConvolution(conv, weightLayout: layout, input: input, output: output, residual: residual),
                              isSplit: false)
    }

    /// The threaded `pointwiseConvolution`: the GEMM's row tiles or column panels split between
    /// the parts. Arguments: x, w, [bias], [residual], y, work.
    mutating func threadedPointwiseConvolution(input: CTensor, outputChannels: Int, hasBias: Bool, activation: Activation,
                                               hasResidual: Bool, parts: Int) -> String {
        use(.pointwiseTile)
        let pixels = input.pixels, inputChannels = input.channels
        var body = CWriter()
        emitPartitionedPointwiseGEMM(&body, pixels: pixels, inputChannels: inputChannels, outputChannels: outputChannels, x: "x",
                                     weights: "w", bias: hasBias ? "bias" : nil, residual: hasResidual ? "residual" : nil, y: "y",
                                     activation: activation, parts: parts)
        let name = "pointwise_f32_\(input.label)_to_\(outputChannels)" + activationSuffix(activation)
            + (hasResidual ? "_residual" : "") + (hasBias ? "" : "_nobias") + "_parts\(parts)"
        var parameters = [inputParameter, constParameter("w")]
        if hasBias { parameters.append(constParameter("bias")) }
        if hasResidual { parameters.append(constParameter("residual")) }
        parameters += [outputParameter, threadWorkParameter]
        let summary = "1x1 convolution as a GEMM in \(parts) parts: y[\(pixels)][\(outputChannels)] = x[\(pixels)][\(inputChannels)]"
            + " * w[\(inputChannels)][\(outputChannels)] in \(weightPanelWidth)-column panels"
            + epilogueDescription(hasBias: hasBias, activation: activation, hasResidual: hasResidual)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Writes the threaded `convolutionByPixels`: output rows split between the parts.
    /// Arguments: x, w, [bias], [residual], y, work.
    mutating func threadedConvolutionByPixels(_ conv: Conv2D, input: CTensor, output: CTensor, hasResidual: Bool, parts: Int) -> String {
        let kh = conv.kernelHeight, kw = conv.kernelWidth, outChannels = conv.outChannels
        var body = CWriter()
        body.partTable("rows", partBounds(output.height, parts: parts))
        body.openParts()
        body.open("for (int oy = rows[part]; oy < rows[part + 1]; ++oy)")
        let rowOffset = CExpression.times("oy", output.width * outChannels)
        emitConvolutionRow(&body, conv, input: input, outputWidth: output.width, row: "oy", weights: "w",
                           bias: conv.hasBias ? "bias" : nil, residual: hasResidual ? CExpression.offset("residual", rowOffset) : nil,
                           output: CExpression.offset("y", rowOffset))
        body.close()
        body.close()

        let name = "conv\(kh)x\(kw)_\(strideLabel(conv))_f32_\(input.label)_to_\(outChannels)_\(paddingLabel(conv.padding))"
            + activationSuffix(conv.activation) + (hasResidual ? "_residual" : "") + (conv.hasBias ? "" : "_nobias") + "_parts\(parts)"
        var parameters = [inputParameter, constParameter("w")]
        if conv.hasBias { parameters.append(constParameter("bias")) }
        if hasResidual { parameters.append(constParameter("residual")) }
        parameters += [outputParameter, threadWorkParameter]
        let summary = "\(kh)x\(kw) convolution in \(parts) parts of rows, stride \(conv.strideHeight)x\(conv.strideWidth), padding \(conv.padding):"
            + " \(input.label) -> \(output.label), w[\(kh)][\(kw)][\(conv.inChannels)][\(outChannels)]"
            + epilogueDescription(hasBias: conv.hasBias, activation: conv.activation, hasResidual: hasResidual)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Writes the threaded `depthwiseConvolution`: output rows split between the parts.
    /// Arguments: x, w, [bias], [residual], y, work.
    mutating func threadedDepthwiseConvolution(_ conv: Conv2D, input: CTensor, output: CTensor, hasResidual: Bool, parts: Int) -> String {
        let channels = input.channels, kh = conv.kernelHeight
        let rowFloats = input.width * channels
        var body = CWriter()
        body.partTable("output_rows", partBounds(output.height, parts: parts))
        body.openParts()
        body.open("for (int oy = output_rows[part]; oy < output_rows[part + 1]; ++oy)")
        body.line("const int iy0 = \(CExpression.sum([CExpression.times("oy", conv.strideHeight), String(-conv.padding.top)]));")
        body.line("const int ky0 = iy0 < 0 ? -iy0 : 0;")
        body.line("const int ky1 = iy0 + \(kh) > \(input.height) ? \(input.height) - iy0 : \(kh);")
        // Rows outside the input are never read; they point at x so that no pointer leaves the tensor.
        body.line("const float *rows[\(kh)];")
        body.openFor("ky", to: kh)
        body.line("rows[ky] = ky >= ky0 && ky < ky1 ? x + (iy0 + ky) * \(rowFloats) : x;")
        body.close()
        let rowOffset = CExpression.times("oy", output.width * channels)
        let row = DepthwiseRow(conv: conv, inputWidth: input.width, outputWidth: output.width, channels: channels,
                               rows: "rows", weights: "w", bias: conv.hasBias ? "bias" : nil,
                               output: CExpression.offset("y", rowOffset),
                               residual: hasResidual ? CExpression.offset("residual", rowOffset) : nil)
        body.open("if (ky0 == 0 && ky1 == \(kh))")
        emitDepthwiseRow(&body, row, ky0: "0", ky1: "\(kh)")
        body.openElse()
        emitDepthwiseRow(&body, row, ky0: "ky0", ky1: "ky1")
        body.close()
        body.close()
        body.close()

        let name = "depthwise\(kh)x\(conv.kernelWidth)_\(strideLabel(conv))_f32_\(input.label)_\(paddingLabel(conv.padding))"
            + activationSuffix(conv.activation) + (hasResidual ? "_residual" : "") + (conv.hasBias ? "" : "_nobias") + "_parts\(parts)"
        var parameters = [inputParameter, constParameter("w")]
        if conv.hasBias { parameters.append(constParameter("bias")) }
        if hasResidual { parameters.append(constParameter("residual")) }
        parameters += [outputParameter, threadWorkParameter]
        let summary = "\(kh)x\(conv.kernelWidth) depthwise convolution in \(parts) parts of rows, stride \(conv.strideHeight)x\(conv.strideWidth),"
            + " padding \(conv.padding): \(input.label) -> \(output.label), w[\(kh)][\(conv.kernelWidth)][\(channels)]"
            + epilogueDescription(hasBias: conv.hasBias, activation: conv.activation, hasResidual: hasResidual)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Floats of one part's BatchNorm scale vector, a multiple of 16 (64 bytes).
    static func batchNormScaleFloats(channels: Int) -> Int { align(channels, 16) }

    /// Writes the threaded `batchNorm`: each part computes the whole scale vector into its own slot of
    /// the scratch area, then normalizes its pixels.
    /// Arguments: x, weight, bias, running_mean, running_var, scratch (parts × scale), y, work.
    mutating func threadedBatchNorm(epsilon: Float, input: CTensor, output: CTensor, parts: Int) -> String {
        needsMath = true
        let channels = input.channels
        var body = CWriter()
        body.partTable("pixels", partBounds(input.pixels, parts: parts))
        body.openParts()
        body.line("float *restrict scale = scratch + part * \(CKernelLibrary.batchNormScaleFloats(channels: channels));")
        body.openFor("c", to: channels)
        body.line("scale[c] = (float)((double)gamma[c] / sqrt((double)variance[c] + (double)\(CExpression.float(epsilon))));")
        body.close()
        body.open("for (int p = pixels[part]; p < pixels[part + 1]; ++p)")
        body.openFor("c", to: channels)
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = (x[\(input.index(pixel: "p", channel: "c"))] - mean[c]) * scale[c] + beta[c];")
        body.close()
        body.close()
        body.close()
        let parameters = [inputParameter, constParameter("gamma"), constParameter("beta"), constParameter("mean"),
                          constParameter("variance"), "float *restrict scratch", outputParameter, threadWorkParameter]
        let summary = "inference BatchNorm in \(parts) parts of pixels, epsilon \(epsilon): \(input.label) -> \(output.label)"
        return define(name: "batchnorm_f32_\(input.label)_parts\(parts)", summary: summary, parameters: parameters, body: body)
    }

    /// Writes the threaded `activation`. Arguments: x, y, work.
    mutating func threadedActivation(_ activation: Activation, input: CTensor, output: CTensor, parts: Int) -> String {
        use(.activation)
        var body = CWriter()
        partitionedElementwise(&body, inputs: [input], output: output, parts: parts) { values in
            "activate_f32(\(values[0]), \(activationConstant(activation)))"
        }
        return define(name: "\(activation.rawValue)_f32_\(input.label)_parts\(parts)",
                      summary: "\(activation.rawValue) in \(parts) parts: \(input.label) -> \(output.label)",
                      parameters: [inputParameter, outputParameter, threadWorkParameter], body: body)
    }

    /// Writes the threaded `add`. Arguments: a, b, y, work.
    mutating func threadedAdd(_ lhs: CTensor, _ rhs: CTensor, output: CTensor, parts: Int) -> String {
        var body = CWriter()
        partitionedElementwise(&body, inputs: [lhs, rhs], output: output, names: ["a", "b"], parts: parts) { values in
            "\(values[0]) + \(values[1])"
        }
        let name = "add_f32_\(lhs.label)" + (lhs.label == rhs.label ? "" : "_\(rhs.label)") + "_parts\(parts)"
        return define(name: name, summary: "element-wise sum in \(parts) parts: \(lhs.label) + \(rhs.label) -> \(output.label)",
                      parameters: [constParameter("a"), constParameter("b"), outputParameter, threadWorkParameter], body: body)
    }

    /// Writes the threaded `channelScale`: pixels split between the parts. Arguments: x, scale, y, work.
    mutating func threadedChannelScale(input: CTensor, output: CTensor, parts: Int) -> String {
        var body = CWriter()
        body.partTable("pixels", partBounds(input.pixels, parts: parts))
        body.openParts()
        body.open("for (int p = pixels[part]; p < pixels[part + 1]; ++p)")
        body.openFor("c", to: input.channels)
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = x[\(input.index(pixel: "p", channel: "c"))] * scale[c];")
        body.close()
        body.close()
        body.close()
        return define(name: "channel_scale_f32_\(input.label)_parts\(parts)",
                      summary: "per-channel scale in \(parts) parts: \(input.label) * scale[\(input.channels)]",
                      parameters: [inputParameter, constParameter("scale"), outputParameter, threadWorkParameter], body: body)
    }

    /// Writes the threaded `linear`: outputs split between the parts. Arguments: x, w, [bias], y, work.
    mutating func threadedLinear(_ linear: Linear, parts: Int) -> String {
        use(.matrixVector)
        var body = CWriter()
        body.partTable("outputs", partBounds(linear.outFeatures, parts: parts))
        body.openParts()
        body.line("const int first = outputs[part];")
        body.line("matrix_vector_f32(x, w + first * \(linear.inFeatures), \(linear.hasBias ? "bias + first" : "NULL"), y + first, "
                  + "outputs[part + 1] - first, \(linear.inFeatures), \(linear.hasBias ? 1 : 0), \(activationConstant(linear.activation)));")
        body.close()
        var parameters = [inputParameter, constParameter("w")]
        if linear.hasBias { parameters.append(constParameter("bias")) }
        parameters += [outputParameter, threadWorkParameter]
        let name = "linear_f32_\(linear.inFeatures)_to_\(linear.outFeatures)" + activationSuffix(linear.activation)
            + (linear.hasBias ? "" : "_nobias") + "_parts\(parts)"
        let summary = "fully connected in \(parts) parts of outputs: y[\(linear.outFeatures)] = w[\(linear.outFeatures)][\(linear.inFeatures)]"
            + " * x[\(linear.inFeatures)]" + epilogueDescription(hasBias: linear.hasBias, activation: linear.activation, hasResidual: false)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Writes `y[i] = expression(inputs[i])` for this thread's parts: a flat range of elements when
    /// every operand is channels-last, else a range of pixels.
    private func partitionedElementwise(_ body: inout CWriter, inputs: [CTensor], output: CTensor, names: [String] = ["x"],
                                        parts: Int, expression: ([String]) -> String) {
        if inputs.allSatisfy(\.isChannelsLast) {
            body.partTable("elements", partBounds(output.count, parts: parts))
            body.openParts()
            body.open("for (int i = elements[part]; i < elements[part + 1]; ++i)")
            body.line("y[i] = \(expression(names.map { "\($0)[i]" }));")
            body.close()
            body.close()
            return
        }
        body.partTable("pixels", partBounds(output.pixels, parts: parts))
        body.openParts()
        body.open("for (int p = pixels[part]; p < pixels[part + 1]; ++p)")
        body.openFor("c", to: output.channels)
        let values = zip(names, inputs).map { name, tensor in "\(name)[\(tensor.index(pixel: "p", channel: "c"))]" }
        body.line("y[\(output.index(pixel: "p", channel: "c"))] = \(expression(values));")
        body.close()
        body.close()
        body.close()
    }
}

/// Returns the scratch bytes a node's threaded kernel needs with `threads` parts; the
/// single-thread figure for one part.
func cScratchBytes(_ node: Node, threads: Int) -> Int {
    guard threads > 1 else { return cScratchBytes(node) }
    switch node.op {
    case .batchNorm: return threads * CKernelLibrary.batchNormScaleFloats(channels: node.shape[1]) * 4
    case .fusedBlock(let block):
        if let schedule = threadedBlockSchedule(node, block, parts: threads) { return schedule.scratchFloats * 4 }
        return cScratchBytes(node)
    default: return cScratchBytes(node)
    }
}

extension CNodeEmitter {
    /// Emits the threaded call of node `index`, after a barrier when an earlier node had a call.
    mutating func emitThreadedCall(for index: Int, into calls: inout CWriter) throws {
        let node = graph.nodes[index]
        let output = CTensor(shape: node.shape, layout: .nhwc)
        let kernel: ThreadedKernel
        var arguments: [String]
        switch node.op {
        case .input, .flatten, .dropout:
            return
        case .conv2d(let conv):
            guard let weightParameter = node.parameter("weight") else {
                throw MNCError("node '\(node.name)' has no parameter 'weight'")
            }
            kernel = library.threadedConvolution(conv, weightLayout: weightParameter.layout, input: tensor(node.inputs[0]), output: output,
                                                 residual: conv.hasResidual ? tensor(node.inputs[1]) : nil, parts: parts)
            arguments = [value(node.inputs[0]), try weight(node, "weight")]
            if conv.hasBias { arguments.append(try weight(node, "bias")) }
            if conv.hasResidual { arguments.append(value(node.inputs[1])) }
        case .batchNorm(let epsilon):
            kernel = ThreadedKernel(name: library.threadedBatchNorm(epsilon: epsilon, input: tensor(node.inputs[0]), output: output, parts: parts),
                                    isSplit: true)
            arguments = [value(node.inputs[0])]
            for role in ["weight", "bias", "running_mean", "running_var"] {
                arguments.append(try weight(node, role))
            }
            arguments.append(try scratch(index))
        case .activation(let activation):
            kernel = ThreadedKernel(name: library.threadedActivation(activation, input: tensor(node.inputs[0]), output: output, parts: parts),
                                    isSplit: true)
            arguments = [value(node.inputs[0])]
        case .add:
            kernel = ThreadedKernel(name: library.threadedAdd(tensor(node.inputs[0]), tensor(node.inputs[1]), output: output, parts: parts),
                                    isSplit: true)
            arguments = [value(node.inputs[0]), value(node.inputs[1])]
        case .globalAveragePool:
            kernel = ThreadedKernel(name: library.globalAveragePool(input: tensor(node.inputs[0])), isSplit: false)
            arguments = [value(node.inputs[0])]
        case .linear(let linear):
            kernel = ThreadedKernel(name: library.threadedLinear(linear, parts: parts), isSplit: true)
            arguments = [value(node.inputs[0]), try weight(node, "weight", layout: .pytorch)]
            if linear.hasBias { arguments.append(try weight(node, "bias")) }
        case .channelScale:
            kernel = ThreadedKernel(name: library.threadedChannelScale(input: tensor(node.inputs[0]), output: output, parts: parts),
                                    isSplit: true)
            arguments = [value(node.inputs[0]), value(node.inputs[1])]
        case .squeezeExcite(let se):
            kernel = ThreadedKernel(name: library.squeezeExcite(se, input: tensor(node.inputs[0]), output: output), isSplit: false)
            arguments = [value(node.inputs[0]),
                         try weight(node, "fc1.weight", layout: .pytorch), try weight(node, "fc1.bias"),
                         try weight(node, "fc2.weight", layout: .pytorch), try weight(node, "fc2.bias"),
                         try scratch(index)]
        case .fusedBlock(let block):
            kernel = try library.threadedFusedBlock(node, block, input: tensor(node.inputs[0]), output: output,
                                                    residual: block.project.hasResidual ? tensor(node.inputs[1]) : nil, parts: parts)
            arguments = [value(node.inputs[0])]
            for role in block.cParameterRoles {
                arguments.append(try weight(node, role))
            }
            if block.project.hasResidual { arguments.append(value(node.inputs[1])) }
            arguments.append(try scratch(index))
        }
        arguments.append(value(index))

        if threadedCalls > 0 {
            calls.line("work_barrier(work);")
        }
        threadedCalls += 1
        let ops = node.fusedOps.joined(separator: " + ")
        let comment = "%\(index) \(node.name): \(ops) -> \(node.shape.dropFirst().map(String.init).joined(separator: "x"))"
        calls.line("/* \(comment.replacingOccurrences(of: "*/", with: "* /")) */")
        if kernel.isSplit {
            calls.line("\(kernel.name)(\((arguments + ["work"]).joined(separator: ", ")));")
        } else {
            calls.line("if (work->first_part == 0) \(kernel.name)(\(arguments.joined(separator: ", ")));")
        }
    }
}
