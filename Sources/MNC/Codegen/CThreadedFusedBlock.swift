/// The threaded kernel of a fused inverted-residual block.
///
/// The output rows are split into N parts of nearly equal height. Each part streams its rows as
/// the single-thread kernel does (expansion into a ring, depthwise rows into a band buffer,
/// projection per band), with its own ring and band buffer in the scratch area. A part starts
/// its ring at the first expanded row its depthwise windows read, so the rows above it are not
/// expanded again. The rows that two parts' windows share (the kernel height minus the stride)
/// are expanded by both. A part's last band and chunk may be shorter than the others, and those
/// run through a GEMM whose row count is known at run time.
///
/// With a squeeze-excitation the band buffer holds the whole depthwise output, shared by the
/// parts, and each part sums its rows per channel into its own slot. After a barrier every
/// thread adds up the parts' sums in part order and computes the gate itself; each part scales
/// its share of the channels (of the projection's weights) or of the pixels (of the depthwise
/// output); after a second barrier the parts split the projection's GEMM.
///
/// On small maps the rows that two parts share are a large fraction of the expansion: on 7×7 with
/// a 5×5 kernel, 2 parts would expand 11 rows for 7. When the parts would expand more than 5 %
/// extra rows and the expansion is a GEMM, the block runs on whole tensors instead (on 2 cores
/// of an AMD EPYC, MobileNetV2 and V3 ran 1 % to 3 % faster with this limit than with 15 %): the parts
/// split the expansion's GEMM into a shared expanded tensor, and after a barrier they split the
/// depthwise rows into a shared depthwise output, then (after the gate, with a
/// squeeze-excitation) the projection's GEMM.
///
/// Blocks that the single-thread kernel computes stage by stage (unpacked weights, a planar
/// input) run the threaded convolution kernels one after another, with a barrier between them.

/// The schedule and scratch layout (in floats) of a streaming fused block's threaded kernel.
struct ThreadedBlockSchedule: Equatable {
    var parts: Int
    /// Output rows of each part: part p has rows `[outputRows[p], outputRows[p + 1])`.
    var outputRows: [Int]
    var bandRows: Int
    var chunkRows: Int
    var ringChunks: Int
    /// The first expanded row each part reads, where its chunks start.
    var firstExpandedRows: [Int]
    /// One past the last expanded row each part reads; its last chunk stops there.
    var endExpandedRows: [Int]
    /// Floats of one part's ring (0 without an expansion).
    var ringFloats: Int
    /// Floats of one part's band buffer; 0 with a squeeze-excitation, whose band buffer is shared.
    var bandFloats: Int
    /// Floats shared by the parts: the whole depthwise output and the scaled projection weights,
    /// with a squeeze-excitation.
    var sharedFloats: Int
    /// Floats of one part's area: its ring, then its band buffer, or with a squeeze-excitation its
    /// channel sums, means, squeezed vector and gate.
    var partFloats: Int
    var scalesWeights: Bool
    /// True when the block runs on whole tensors: the shared area then also contains the whole
    /// expanded tensor, after the depthwise output and the scaled weights, and there is no ring.
    var wholeTensors = false

    var scratchFloats: Int { sharedFloats + parts * partFloats }
}

/// Returns the threaded schedule of the fused block `node` for `parts` parts, or nil when the
/// single-thread schedule does not stream (the kernel then runs stage by stage).
func threadedBlockSchedule(_ node: Node, _ block: FusedBlock, parts: Int) -> ThreadedBlockSchedule? {
    guard fusedBlockSchedule(node, block).streams else { return nil }
    let depthwise = block.depthwise
    let channels = depthwise.inChannels
    let height = node.shape[2], width = node.shape[3]
    let expandedHeight = block.expandedHeight
    let stride = depthwise.strideHeight, kernel = depthwise.kernelHeight, padTop = depthwise.padding.top

    let outputRows = partBounds(height, parts: parts)
    // Bands of about 48 output pixels, as the single-thread kernel, but no taller than a part.
    let bandRows = max(1, min((48 + width - 1) / width, (height + parts - 1) / parts))
    let chunkRows = max(1, min(bandRows * stride, expandedHeight))
    var firstRows: [Int] = [], endRows: [Int] = []
    var ringChunks = 1
    for part in 0..<parts {
        let start = outputRows[part], end = outputRows[part + 1]
        guard end > start else {
            firstRows.append(0)
            endRows.append(0)
            continue
        }
        let first = max(0, start * stride - padTop)
        let last = min(expandedHeight - 1, (end - 1) * stride - padTop + kernel - 1)
        firstRows.append(first)
        endRows.append(max(first, last + 1))
        // The chunks (counted from `first`) that each band reads must fit in the ring at once.
        var bandStart = start
        while bandStart < end {
            let bandEnd = min(bandStart + bandRows, end)
            let low = max(0, bandStart * stride - padTop)
            let high = min(expandedHeight - 1, (bandEnd - 1) * stride - padTop + kernel - 1)
            if high >= low {
                ringChunks = max(ringChunks, (high - first) / chunkRows - (low - first) / chunkRows + 1)
            }
            bandStart = bandEnd
        }
    }

    let vectors = block.squeezeExcite.map { 3 * align(channels, 16) + align($0.squeezeChannels, 16) } ?? 0
    let scalesWeights = block.squeezeExcite != nil && block.project.outChannels <= height * width
    let scaledFloats = scalesWeights ? align(channels * block.project.outChannels, 16) : 0
    let expandedRows = zip(firstRows, endRows).map { $1 - $0 }.reduce(0, +)
    if let expand = block.expand, packedLayout(expand) == .inputOutputPanels, parts > 1, expandedRows * 100 > expandedHeight * 105 {
        let shared = align(height * width * channels, 16) + scaledFloats + align(expandedHeight * block.expandedWidth * channels, 16)
        return ThreadedBlockSchedule(parts: parts, outputRows: outputRows, bandRows: bandRows, chunkRows: chunkRows,
                                     ringChunks: ringChunks, firstExpandedRows: firstRows, endExpandedRows: endRows,
                                     ringFloats: 0, bandFloats: 0, sharedFloats: shared, partFloats: vectors,
                                     scalesWeights: scalesWeights, wholeTensors: true)
    }

    let ringFloats = block.expand == nil ? 0 : align(ringChunks * chunkRows * block.expandedWidth * channels, 16)
    guard block.squeezeExcite != nil else {
        let bandFloats = align(bandRows * width * channels, 16)
        return ThreadedBlockSchedule(parts: parts, outputRows: outputRows, bandRows: bandRows, chunkRows: chunkRows,
                                     ringChunks: ringChunks, firstExpandedRows: firstRows, endExpandedRows: endRows,
                                     ringFloats: ringFloats, bandFloats: bandFloats, sharedFloats: 0,
                                     partFloats: ringFloats + bandFloats, scalesWeights: false)
    }
    let shared = align(height * width * channels, 16) + scaledFloats
    return ThreadedBlockSchedule(parts: parts, outputRows: outputRows, bandRows: bandRows, chunkRows: chunkRows,
                                 ringChunks: ringChunks, firstExpandedRows: firstRows, endExpandedRows: endRows,
                                 ringFloats: ringFloats, bandFloats: 0, sharedFloats: shared,
                                 partFloats: ringFloats + vectors, scalesWeights: scalesWeights)
}

extension CKernelLibrary {
    /// Defines the threaded kernel of a fused block. Arguments: those of `fusedBlock`, then work.
    mutating func threadedFusedBlock(_ node: Node, _ block: FusedBlock, input: CTensor, output: CTensor, residual: CTensor?,
                                     parts: Int) throws -> ThreadedKernel {
        var body = CWriter()
        let plan: String
        if let schedule = threadedBlockSchedule(node, block, parts: parts), schedule.wholeTensors {
            emitThreadedWholeBlock(&body, block, schedule: schedule, input: input, output: output, hasResidual: residual != nil)
            plan = "whole tensors in scratch, each stage in \(parts) parts"
        } else if let schedule = threadedBlockSchedule(node, block, parts: parts) {
            emitThreadedStreamingBlock(&body, block, schedule: schedule, input: input, output: output, hasResidual: residual != nil)
            plan = "\(parts) parts of rows, bands of \(schedule.bandRows) output rows"
                + (block.expand == nil ? "" : ", rings of \(schedule.ringChunks) x \(schedule.chunkRows) expanded rows")
        } else {
            try emitThreadedStagewiseBlock(&body, node, block, input: input, output: output, residual: residual, parts: parts)
            plan = "whole tensors in scratch, each stage in \(parts) parts"
        }

        var parameters = [inputParameter] + block.cParameterRoles.map { constParameter(cArgumentName($0)) }
        if residual != nil { parameters.append(constParameter("residual")) }
        parameters += ["float *restrict scratch", outputParameter, threadWorkParameter]
        var stages: [String] = []
        for (prefix, conv) in block.stages {
            if prefix == "project", let se = block.squeezeExcite {
                stages.append("squeeze-excite \(se.channels) -> \(se.squeezeChannels) \(se.activation.rawValue), gate \(se.gate.rawValue)")
            }
            stages.append("\(prefix) \(conv.kernelHeight)x\(conv.kernelWidth) stride \(conv.strideHeight)x\(conv.strideWidth)"
                          + " padding \(conv.padding) -> \(conv.outChannels)" + activationSuffix(conv.activation).replacingOccurrences(of: "_", with: " "))
        }
        let summary = "fused block: \(input.label) -> \(output.label); " + stages.joined(separator: ", ")
            + (residual != nil ? ", residual" : "") + "; " + plan
        let name = "block_f32_\(input.label)_to_\(output.label)" + (residual != nil ? "_residual" : "") + "_parts\(parts)"
        return ThreadedKernel(name: define(name: name, summary: summary, parameters: parameters, body: body), isSplit: true)
    }

    /// Writes the part loop of a streaming fused block, and with a squeeze-excitation the gate and
    /// the split projection after it.
    private mutating func emitThreadedStreamingBlock(_ body: inout CWriter, _ block: FusedBlock, schedule: ThreadedBlockSchedule,
                                                     input: CTensor, output: CTensor, hasResidual: Bool) {
        let depthwise = block.depthwise, project = block.project
        let channels = depthwise.inChannels
        let expandedHeight = block.expandedHeight, expandedWidth = block.expandedWidth
        let expandedRowFloats = expandedWidth * channels
        let bandRows = schedule.bandRows, chunkRows = schedule.chunkRows, ringChunks = schedule.ringChunks
        let kh = depthwise.kernelHeight, strideHeight = depthwise.strideHeight, padTop = depthwise.padding.top
        let excitation = block.squeezeExcite
        use(.pointwiseTile)

        body.partTable("output_rows", schedule.outputRows)
        if block.expand != nil {
            body.partTable("first_rows", schedule.firstExpandedRows)
            body.partTable("end_rows", schedule.endExpandedRows)
        }
        if excitation != nil {
            body.line("float *restrict band = scratch;")
        }
        body.openParts()
        let partArea = CExpression.sum([String(schedule.sharedFloats), "part * \(schedule.partFloats)"])
        if block.expand != nil {
            body.line("float *restrict ring = scratch + \(partArea);")
            body.line("const int base = first_rows[part]; /* the expanded row where chunk 0 starts */")
            body.line("const int end_row = end_rows[part];")
            body.line("int next = 0; /* the next chunk of expanded rows to compute */")
        }
        let afterRing = CExpression.sum([String(schedule.sharedFloats + schedule.ringFloats), "part * \(schedule.partFloats)"])
        if excitation != nil {
            body.line("float *restrict pooled = scratch + \(afterRing);")
            body.openFor("c", to: channels)
            body.line("pooled[c] = 0.0f;")
            body.close()
        } else {
            body.line("float *restrict band = scratch + \(afterRing);")
        }

        body.open("for (int oy0 = output_rows[part]; oy0 < output_rows[part + 1]; oy0 += \(bandRows))")
        body.line("const int band_rows = output_rows[part + 1] - oy0 < \(bandRows) ? output_rows[part + 1] - oy0 : \(bandRows);")
        if let expand = block.expand {
            let reach = -padTop + kh - 1 - strideHeight
            body.line("int last_row = \(CExpression.sum([CExpression.times("oy0 + band_rows", strideHeight), String(reach)]));")
            body.line("if (last_row > \(expandedHeight - 1)) last_row = \(expandedHeight - 1);")
            body.open("for (; base + next * \(chunkRows) <= last_row; ++next)")
            body.line("const int start = base + next * \(chunkRows);")
            body.line("const int count = end_row - start < \(chunkRows) ? end_row - start : \(chunkRows);")
            let slot = ringChunks == 1 ? "ring" : "ring + next % \(ringChunks) * \(chunkRows * expandedRowFloats)"
            body.line("float *restrict chunk = \(slot);")
            if packedLayout(expand) == .inputOutputPanels {
                let source = "x + start * \(input.width * input.channels)"
                body.open("if (count == \(chunkRows))")
                emitPointwiseGEMM(&body, pixels: chunkRows * expandedWidth, inputChannels: expand.inChannels, outputChannels: channels,
                                  x: source, weights: "expand_w", bias: expand.hasBias ? "expand_bias" : nil, residual: nil,
                                  y: "chunk", activation: expand.activation)
                body.openElse()
                body.line("const int pixels = count * \(expandedWidth);")
                emitRuntimePointwiseGEMM(&body, pixels: "pixels", inputChannels: expand.inChannels, outputChannels: channels, x: source,
                                         weights: "expand_w", bias: expand.hasBias ? "expand_bias" : nil, residual: nil,
                                         y: "chunk", activation: expand.activation)
                body.close()
            } else {
                body.open("for (int r = 0; r < count; ++r)")
                emitConvolutionRow(&body, expand, input: input, outputWidth: expandedWidth, row: "start + r",
                                   weights: "expand_w", bias: expand.hasBias ? "expand_bias" : nil, residual: nil,
                                   output: "chunk + r * \(expandedRowFloats)")
                body.close()
            }
            body.close()
        }

        body.open("for (int r = 0; r < band_rows; ++r)")
        body.line("const int iy0 = \(CExpression.sum([CExpression.times("oy0 + r", strideHeight), String(-padTop)]));")
        body.line("const int ky0 = iy0 < 0 ? -iy0 : 0;")
        body.line("const int ky1 = iy0 + \(kh) > \(expandedHeight) ? \(expandedHeight) - iy0 : \(kh);")
        // Rows outside the tensor are never read; they point at its start.
        body.line("const float *rows[\(kh)];")
        body.openFor("ky", to: kh)
        if block.expand != nil {
            // A ring of one chunk of one row contains a single row, so no row index is needed.
            if ringChunks > 1 || chunkRows > 1 {
                body.line("const int row = iy0 + ky - base;")
            }
            var address = "ring"
            if ringChunks > 1 {
                let chunk = chunkRows == 1 ? "row" : "row / \(chunkRows)"
                address += " + \(chunk) % \(ringChunks) * \(chunkRows * expandedRowFloats)"
            }
            if chunkRows > 1 {
                address += " + row % \(chunkRows) * \(expandedRowFloats)"
            }
            body.line("rows[ky] = ky >= ky0 && ky < ky1 ? \(address) : ring;")
        } else {
            body.line("rows[ky] = ky >= ky0 && ky < ky1 ? x + (iy0 + ky) * \(expandedRowFloats) : x;")
        }
        body.close()
        // With a squeeze-excitation the band buffer contains every output row.
        let bandRow = excitation == nil ? "r" : "oy0 + r"
        let rowOutput = "band + \(CExpression.times(bandRow, output.width * channels))"
        let row = DepthwiseRow(conv: depthwise, inputWidth: expandedWidth, outputWidth: output.width, channels: channels,
                               rows: "rows", weights: "depthwise_w", bias: depthwise.hasBias ? "depthwise_bias" : nil,
                               output: rowOutput, residual: nil)
        body.open("if (ky0 == 0 && ky1 == \(kh))")
        emitDepthwiseRow(&body, row, ky0: "0", ky1: "\(kh)")
        body.openElse()
        emitDepthwiseRow(&body, row, ky0: "ky0", ky1: "ky1")
        body.close()
        if excitation != nil {
            // The part's channel sums of the squeeze-excitation, while the row is in L1.
            body.line("const float *restrict filtered = \(rowOutput);")
            body.openFor("p", to: output.width)
            body.openFor("c", to: channels)
            body.line("pooled[c] += filtered[p * \(channels) + c];")
            body.close()
            body.close()
        }
        body.close()

        if excitation == nil {
            let outputOffset = CExpression.times("oy0", output.width * project.outChannels)
            let target = CExpression.offset("y", outputOffset)
            let residualPointer = hasResidual ? CExpression.offset("residual", outputOffset) : nil
            let channelList = emitNonzeroChannels(&body, pixels: "band_rows * \(output.width)", channels: channels)
            body.open("if (band_rows == \(bandRows))")
            emitPointwiseGEMM(&body, pixels: bandRows * output.width, inputChannels: channels, outputChannels: project.outChannels,
                              x: "band", weights: "project_w", bias: project.hasBias ? "project_bias" : nil,
                              residual: residualPointer, y: target, activation: project.activation, channelList: channelList)
            body.openElse()
            body.line("const int pixels = band_rows * \(output.width);")
            emitRuntimePointwiseGEMM(&body, pixels: "pixels", inputChannels: channels, outputChannels: project.outChannels,
                                     x: "band", weights: "project_w", bias: project.hasBias ? "project_bias" : nil,
                                     residual: residualPointer, y: target, activation: project.activation, channelList: channelList)
            body.close()
        }
        body.close()
        body.close()

        if let se = excitation {
            emitThreadedExcitationAndProjection(&body, se: se, project: project, schedule: schedule, output: output, hasResidual: hasResidual)
        }
    }

    /// Writes the whole-tensor form of a block (see the file's documentation).
    private mutating func emitThreadedWholeBlock(_ body: inout CWriter, _ block: FusedBlock, schedule: ThreadedBlockSchedule,
                                                 input: CTensor, output: CTensor, hasResidual: Bool) {
        guard let expand = block.expand else { return }
        let depthwise = block.depthwise, project = block.project
        let channels = depthwise.inChannels, kh = depthwise.kernelHeight
        let expandedHeight = block.expandedHeight, expandedWidth = block.expandedWidth
        let expandedRowFloats = expandedWidth * channels
        let bandFloats = align(output.pixels * channels, 16)
        let scaledFloats = schedule.scalesWeights ? align(channels * project.outChannels, 16) : 0
        use(.pointwiseTile)

        body.line("float *restrict band = scratch;")
        body.line("float *restrict expanded = scratch + \(bandFloats + scaledFloats);")
        emitPartitionedPointwiseGEMM(&body, pixels: expandedHeight * expandedWidth, inputChannels: expand.inChannels, outputChannels: channels,
                                     x: "x", weights: "expand_w", bias: expand.hasBias ? "expand_bias" : nil, residual: nil,
                                     y: "expanded", activation: expand.activation, parts: schedule.parts)
        body.line("work_barrier(work);")

        body.partTable("output_rows", schedule.outputRows)
        body.openParts()
        if block.squeezeExcite != nil {
            body.line("float *restrict pooled = scratch + \(CExpression.sum([String(schedule.sharedFloats), "part * \(schedule.partFloats)"]));")
            body.openFor("c", to: channels)
            body.line("pooled[c] = 0.0f;")
            body.close()
        }
        body.open("for (int oy = output_rows[part]; oy < output_rows[part + 1]; ++oy)")
        body.line("const int iy0 = \(CExpression.sum([CExpression.times("oy", depthwise.strideHeight), String(-depthwise.padding.top)]));")
        body.line("const int ky0 = iy0 < 0 ? -iy0 : 0;")
        body.line("const int ky1 = iy0 + \(kh) > \(expandedHeight) ? \(expandedHeight) - iy0 : \(kh);")
        // Rows outside the tensor are never read; they point at its start.
        body.line("const float *rows[\(kh)];")
        body.openFor("ky", to: kh)
        body.line("rows[ky] = ky >= ky0 && ky < ky1 ? expanded + (iy0 + ky) * \(expandedRowFloats) : expanded;")
        body.close()
        let rowOutput = "band + \(CExpression.times("oy", output.width * channels))"
        let row = DepthwiseRow(conv: depthwise, inputWidth: expandedWidth, outputWidth: output.width, channels: channels,
                               rows: "rows", weights: "depthwise_w", bias: depthwise.hasBias ? "depthwise_bias" : nil,
                               output: rowOutput, residual: nil)
        body.open("if (ky0 == 0 && ky1 == \(kh))")
        emitDepthwiseRow(&body, row, ky0: "0", ky1: "\(kh)")
        body.openElse()
        emitDepthwiseRow(&body, row, ky0: "ky0", ky1: "ky1")
        body.close()
        if block.squeezeExcite != nil {
            body.line("const float *restrict filtered = \(rowOutput);")
            body.openFor("p", to: output.width)
            body.openFor("c", to: channels)
            body.line("pooled[c] += filtered[p * \(channels) + c];")
            body.close()
            body.close()
        }
        body.close()
        body.close()

        if let se = block.squeezeExcite {
            emitThreadedExcitationAndProjection(&body, se: se, project: project, schedule: schedule, output: output, hasResidual: hasResidual)
        } else {
            body.line("work_barrier(work);")
            use(.nonzeroChannels)
            emitPartitionedPointwiseGEMM(&body, pixels: output.pixels, inputChannels: channels, outputChannels: project.outChannels,
                                         x: "band", weights: "project_w", bias: project.hasBias ? "project_bias" : nil,
                                         residual: hasResidual ? "residual" : nil, y: "y", activation: project.activation,
                                         parts: schedule.parts, skipsZeroChannels: true)
        }
    }

    /// Writes what follows the depthwise rows of a block with a squeeze-excitation: a barrier,
    /// the gate from the parts' channel sums, the scaling, a barrier and the split projection.
    /// The depthwise output is `band` at the start of the scratch area, and each part's channel
    /// sums start its area.
    private mutating func emitThreadedExcitationAndProjection(_ body: inout CWriter, se: SqueezeExcite, project: Conv2D,
                                                              schedule: ThreadedBlockSchedule, output: CTensor, hasResidual: Bool) {
        use(.matrixVector)
        let channels = se.channels
        let channelFloats = align(channels, 16)
        let pixels = output.pixels
        let vectors = String(schedule.sharedFloats + schedule.ringFloats)
        body.line("work_barrier(work);")
        body.open("")
        // The means, squeezed vector and gate live in the slot of the thread's first part.
        body.line("float *restrict mean = scratch + \(CExpression.sum([vectors, "work->first_part * \(schedule.partFloats)", String(channelFloats)]));")
        body.line("float *restrict hidden = mean + \(channelFloats);")
        body.line("float *restrict gate = hidden + \(align(se.squeezeChannels, 16));")
        body.openFor("c", to: channels)
        body.line("mean[c] = 0.0f;")
        body.close()
        body.openFor("other", to: schedule.parts)
        body.line("const float *restrict sums = scratch + \(CExpression.sum([vectors, "other * \(schedule.partFloats)"]));")
        body.openFor("c", to: channels)
        body.line("mean[c] += sums[c];")
        body.close()
        body.close()
        body.openFor("c", to: channels)
        body.line("mean[c] /= \(CExpression.float(Float(pixels)));")
        body.close()
        body.line("matrix_vector_f32(mean, se_fc1_w, se_fc1_bias, hidden, \(se.squeezeChannels), \(channels), 1, \(activationConstant(se.activation)));")
        body.line("matrix_vector_f32(hidden, se_fc2_w, se_fc2_bias, gate, \(channels), \(se.squeezeChannels), 1, \(activationConstant(se.gate)));")

        let weights: String
        if schedule.scalesWeights {
            // Row k of every weight panel multiplies input channel k, so it is scaled by gate[k].
            body.line("float *restrict scaled = scratch + \(align(pixels * channels, 16));")
            body.partTable("channel_parts", partBounds(channels, parts: schedule.parts))
            body.openParts()
            for panel in tileSegments(variable: "n", extent: project.outChannels, step: weightPanelWidth) {
                if panel.isLoop { body.openFor(panel.variable, to: panel.end, step: panel.count) }
                let panelStart = CExpression.times(panel.start, channels)
                body.open("for (int k = channel_parts[part]; k < channel_parts[part + 1]; ++k)")
                body.openFor("j", to: panel.count)
                let index = CExpression.sum([panelStart, "k * \(panel.count)", "j"])
                body.line("scaled[\(index)] = project_w[\(index)] * gate[k];")
                body.close()
                body.close()
                if panel.isLoop { body.close() }
            }
            body.close()
            weights = "scaled"
        } else {
            body.partTable("pixel_parts", partBounds(pixels, parts: schedule.parts))
            body.openParts()
            body.open("for (int p = pixel_parts[part]; p < pixel_parts[part + 1]; ++p)")
            body.openFor("c", to: channels)
            body.line("band[p * \(channels) + c] *= gate[c];")
            body.close()
            body.close()
            body.close()
            weights = "project_w"
        }
        body.close()
        body.line("work_barrier(work);")
        if schedule.scalesWeights {
            body.line("const float *restrict scaled = scratch + \(align(pixels * channels, 16));")
        }
        use(.nonzeroChannels)
        emitPartitionedPointwiseGEMM(&body, pixels: pixels, inputChannels: channels, outputChannels: project.outChannels, x: "band",
                                     weights: weights, bias: project.hasBias ? "project_bias" : nil,
                                     residual: hasResidual ? "residual" : nil, y: "y", activation: project.activation,
                                     parts: schedule.parts, skipsZeroChannels: true)
    }

    /// Writes a fused block stage by stage as `emitStagewiseBlock` does, with the threaded
    /// convolution kernels and a barrier between stages. The scratch layout is the single-thread
    /// one: the whole tensors between stages are shared by the parts.
    private mutating func emitThreadedStagewiseBlock(_ body: inout CWriter, _ node: Node, _ block: FusedBlock, input: CTensor,
                                                     output: CTensor, residual: CTensor?, parts: Int) throws {
        let schedule = fusedBlockSchedule(node, block)
        let channels = block.depthwise.inChannels
        var stageInput = input, stageValue = "x"
        if block.expand != nil {
            body.line("float *restrict expanded = scratch;")
        }
        body.line("float *restrict filtered = " + CExpression.offset("scratch", String(schedule.ringFloats)) + ";")
        if block.squeezeExcite != nil {
            let base = schedule.ringFloats + schedule.bandFloats
            body.line("float *restrict excitation = scratch + \(base);")
            body.line("float *restrict gated = scratch + \(base + schedule.excitationFloats);")
        }
        for (position, (prefix, conv)) in block.stages.enumerated() {
            if position > 0 {
                body.line("work_barrier(work);")
            }
            if prefix == "project", let se = block.squeezeExcite {
                let kernel = squeezeExcite(se, input: stageInput, output: stageInput)
                body.line("if (work->first_part == 0) \(kernel)(\(stageValue), se_fc1_w, se_fc1_bias, se_fc2_w, se_fc2_bias, excitation, gated);")
                body.line("work_barrier(work);")
                stageValue = "gated"
            }
            guard let layout = node.parameter("\(prefix).weight")?.layout else {
                throw MNCError("node '\(node.name)' has no parameter '\(prefix).weight'")
            }
            let stageOutput: CTensor, target: String
            switch prefix {
            case "expand":
                stageOutput = CTensor(shape: [1, channels, block.expandedHeight, block.expandedWidth], layout: .nhwc)
                target = "expanded"
            case "depthwise":
                stageOutput = CTensor(shape: [1, channels, output.height, output.width], layout: .nhwc)
                target = "filtered"
            default:
                stageOutput = output
                target = "y"
            }
            let kernel = threadedConvolution(conv, weightLayout: layout, input: stageInput, output: stageOutput,
                                             residual: conv.hasResidual ? residual : nil, parts: parts)
            var arguments = [stageValue, cArgumentName("\(prefix).weight")]
            if conv.hasBias { arguments.append(cArgumentName("\(prefix).bias")) }
            if conv.hasResidual { arguments.append("residual") }
            arguments.append(target)
            if kernel.isSplit {
                body.line("\(kernel.name)(\((arguments + ["work"]).joined(separator: ", ")));")
            } else {
                body.line("if (work->first_part == 0) \(kernel.name)(\(arguments.joined(separator: ", ")));")
            }
            stageInput = stageOutput
            stageValue = target
        }
    }
}
