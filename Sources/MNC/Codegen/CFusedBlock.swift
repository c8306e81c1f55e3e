/// The C kernel of a fused inverted-residual block: expansion, depthwise and projection
/// convolutions computed a band of output rows at a time. The expanded tensor, up to six times
/// wider than the block's input and output, never reaches memory whole.
///
/// Schedule, for bands of `bandRows` output rows from the top:
/// 1. The expansion writes rows of the expanded tensor E into a ring of `ringChunks` chunks of
///    `chunkRows` rows each, one chunk per step, until E's rows up to the last one that the band's
///    depthwise windows read are there. Chunk j contains E rows `[j·chunkRows, (j+1)·chunkRows)`
///    and lives in slot `j mod ringChunks`. The ring is large enough that no chunk a band reads is
///    overwritten before the band is done.
/// 2. The depthwise convolution reads E's rows from the ring (or the block's input when there is
///    no expansion) and writes the band's rows into a band buffer.
/// 3. The projection (with the residual) reads the band buffer as a GEMM and writes the output rows.
///    It skips the channels that are zero in every pixel of the band, whose terms add nothing.
///    After a ReLU or ReLU6, or a hardswish below -3, whole channels often are.
/// With a squeeze-excitation, the band buffer holds the whole depthwise output and step 3 runs
/// once after the last band: the channel sums accumulate as each depthwise row is written, the two
/// fully connected layers compute the gate, and the gate scales either the projection's weights
/// (when they are smaller than the depthwise output) or the depthwise output in place. The
/// projection then skips the channels that are zero in every pixel of the map.
/// The ring, the band buffer, the squeeze-excitation vectors and the scaled weights are the node's
/// scratch area.

/// The scratch layout and band sizes of a fused block's C kernel.
struct FusedBlockSchedule: Equatable {
    /// False when the weights are not in the packed layouts or the first stage would read the
    /// network input in a planar layout: the kernel then runs the three convolutions one after
    /// another on whole tensors in scratch.
    var streams: Bool
    var bandRows: Int
    var chunkRows: Int
    var ringChunks: Int
    /// Floats of the ring (the whole expanded tensor when not streaming), a multiple of 16.
    var ringFloats: Int
    /// Floats of the band buffer (the whole depthwise output when not streaming or with a
    /// squeeze-excitation), a multiple of 16.
    var bandFloats: Int
    /// Floats of the squeeze-excitation's channel means, squeezed vector and gate.
    var excitationFloats: Int = 0
    /// True when the gate scales a copy of the projection's weights rather than the depthwise output.
    var scalesWeights: Bool = false
    /// Floats of the gated values: the scaled weights when streaming, the gated depthwise output
    /// (the squeeze-excitation kernel's output) when not; a multiple of 16.
    var gatedFloats: Int = 0

    var scratchFloats: Int { ringFloats + bandFloats + excitationFloats + gatedFloats }
}

/// Output pixels per band that the projection GEMM should get at least: 6 row tiles of 8.
private let fusedBlockBandPixels = 48

/// Returns the schedule of the fused block `node`. The choice depends on the node alone (its
/// shapes, its parameters' layouts and whether it reads the network input), so the arena planner
/// and the code generator agree on it.
func fusedBlockSchedule(_ node: Node, _ block: FusedBlock) -> FusedBlockSchedule {
    let depthwise = block.depthwise
    let channels = depthwise.inChannels
    let expandedHeight = block.expandedHeight, expandedWidth = block.expandedWidth
    let outputHeight = node.shape[2], outputWidth = node.shape[3]

    let packed = block.stages.allSatisfy { prefix, conv in node.parameter("\(prefix).weight")?.layout == packedLayout(conv) }
    // The GEMM expansion and the depthwise stage read NHWC; the network input may be planar.
    let readsChannelsLast = block.expand.map { packedLayout($0) == .inputOutputPanels } ?? true
    let filteredFloats = align(outputHeight * outputWidth * channels, 16)
    let excitationFloats = block.squeezeExcite.map { CKernelLibrary.squeezeExciteScratchFloats($0).total } ?? 0
    guard packed && !(readsChannelsLast && node.inputs[0] == 0) else {
        let ring = block.expand == nil ? 0 : align(expandedHeight * expandedWidth * channels, 16)
        return FusedBlockSchedule(streams: false, bandRows: outputHeight, chunkRows: expandedHeight, ringChunks: 1,
                                  ringFloats: ring, bandFloats: filteredFloats, excitationFloats: excitationFloats,
                                  gatedFloats: block.squeezeExcite == nil ? 0 : filteredFloats)
    }

    let bandRows = min(outputHeight, max(1, (fusedBlockBandPixels + outputWidth - 1) / outputWidth))
    var chunkRows = min(bandRows * depthwise.strideHeight, expandedHeight)
    var ringChunks = 1
    var bandStart = 0
    while bandStart < outputHeight {
        let bandEnd = min(bandStart + bandRows, outputHeight)
        let low = max(0, bandStart * depthwise.strideHeight - depthwise.padding.top)
        let high = min(expandedHeight - 1, (bandEnd - 1) * depthwise.strideHeight - depthwise.padding.top + depthwise.kernelHeight - 1)
        if high >= low {
            ringChunks = max(ringChunks, high / chunkRows - low / chunkRows + 1)
        }
        bandStart = bandEnd
    }
    if ringChunks * chunkRows >= expandedHeight {
        chunkRows = expandedHeight
        ringChunks = 1
    }
    let ring = block.expand == nil ? 0 : align(ringChunks * chunkRows * expandedWidth * channels, 16)
    guard block.squeezeExcite != nil else {
        return FusedBlockSchedule(streams: true, bandRows: bandRows, chunkRows: chunkRows, ringChunks: ringChunks,
                                  ringFloats: ring, bandFloats: align(bandRows * outputWidth * channels, 16))
    }
    // Scaling the weights costs in · out multiplications, scaling the depthwise output pixels · in.
    let scalesWeights = block.project.outChannels <= outputHeight * outputWidth
    return FusedBlockSchedule(streams: true, bandRows: bandRows, chunkRows: chunkRows, ringChunks: ringChunks,
                              ringFloats: ring, bandFloats: filteredFloats, excitationFloats: excitationFloats,
                              scalesWeights: scalesWeights,
                              gatedFloats: scalesWeights ? align(channels * block.project.outChannels, 16) : 0)
}

extension FusedBlock {
    /// The parameter roles that the C kernel takes as arguments, in order: each convolution's
    /// weight and bias, with the squeeze-excitation's before the projection's.
    var cParameterRoles: [String] {
        var roles: [String] = []
        for (prefix, conv) in stages {
            if prefix == "project", squeezeExcite != nil {
                roles += ["se.fc1.weight", "se.fc1.bias", "se.fc2.weight", "se.fc2.bias"]
            }
            roles.append("\(prefix).weight")
            if conv.hasBias { roles.append("\(prefix).bias") }
        }
        return roles
    }
}

extension CKernelLibrary {
    /// Defines the kernel of a fused block and returns its name. Arguments: x, then the weight and
    /// (when present) bias of each stage in order, [residual], scratch, y.
    mutating func fusedBlock(_ node: Node, _ block: FusedBlock, input: CTensor, output: CTensor,
                             residual: CTensor?) throws -> String {
        let schedule = fusedBlockSchedule(node, block)
        var body = CWriter()
        if schedule.streams {
            emitStreamingBlock(&body, block, schedule: schedule, input: input, output: output, hasResidual: residual != nil)
        } else {
            try emitStagewiseBlock(&body, node, block, schedule: schedule, input: input, output: output, residual: residual)
        }

        var parameters = [inputParameter] + block.cParameterRoles.map { constParameter(cArgumentName($0)) }
        var stages: [String] = []
        for (prefix, conv) in block.stages {
            if prefix == "project", let se = block.squeezeExcite {
                stages.append("squeeze-excite \(se.channels) -> \(se.squeezeChannels) \(se.activation.rawValue), gate \(se.gate.rawValue)")
            }
            stages.append("\(prefix) \(conv.kernelHeight)x\(conv.kernelWidth) stride \(conv.strideHeight)x\(conv.strideWidth)"
                          + " padding \(conv.padding) -> \(conv.outChannels)" + activationSuffix(conv.activation).replacingOccurrences(of: "_", with: " "))
        }
        if residual != nil { parameters.append(constParameter("residual")) }
        parameters += ["float *restrict scratch", outputParameter]
        let plan = schedule.streams
            ? "bands of \(schedule.bandRows) output rows" + (block.expand == nil ? "" : ", ring of \(schedule.ringChunks) x \(schedule.chunkRows) expanded rows")
            : "whole tensors in scratch"
        let summary = "fused block: \(input.label) -> \(output.label); " + stages.joined(separator: ", ")
            + (residual != nil ? ", residual" : "") + "; " + plan
        let name = "block_f32_\(input.label)_to_\(output.label)" + (residual != nil ? "_residual" : "")
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Writes the band loop of a streaming fused block.
    private mutating func emitStreamingBlock(_ body: inout CWriter, _ block: FusedBlock, schedule: FusedBlockSchedule,
                                             input: CTensor, output: CTensor, hasResidual: Bool) {
        let depthwise = block.depthwise, project = block.project
        let channels = depthwise.inChannels
        let expandedHeight = block.expandedHeight, expandedWidth = block.expandedWidth
        let expandedRowFloats = expandedWidth * channels
        let bandRows = schedule.bandRows, chunkRows = schedule.chunkRows, ringChunks = schedule.ringChunks
        let kh = depthwise.kernelHeight, strideHeight = depthwise.strideHeight, padTop = depthwise.padding.top
        use(.pointwiseTile)

        if block.expand != nil {
            body.line("float *restrict ring = scratch;")
            body.line("int next = 0; /* the next chunk of expanded rows to compute */")
        }
        body.line("float *restrict band = " + CExpression.offset("scratch", String(schedule.ringFloats)) + ";")
        let excitation = block.squeezeExcite.map { CKernelLibrary.squeezeExciteScratchFloats($0) }
        if excitation != nil {
            let base = schedule.ringFloats + schedule.bandFloats
            body.line("float *restrict pooled = scratch + \(base);")
            body.openFor("c", to: channels)
            body.line("pooled[c] = 0.0f;")
            body.close()
        }

        func emitChunk(rowCount: Int) {
            guard let expand = block.expand else { return }
            if packedLayout(expand) == .inputOutputPanels {
                emitPointwiseGEMM(&body, pixels: rowCount * expandedWidth, inputChannels: expand.inChannels, outputChannels: channels,
                                  x: "x + next * \(chunkRows * input.width * input.channels)", weights: "expand_w",
                                  bias: expand.hasBias ? "expand_bias" : nil, residual: nil, y: "chunk", activation: expand.activation)
            } else {
                body.openFor("r", to: rowCount)
                emitConvolutionRow(&body, expand, input: input, outputWidth: expandedWidth, row: "next * \(chunkRows) + r",
                                   weights: "expand_w", bias: expand.hasBias ? "expand_bias" : nil, residual: nil,
                                   output: "chunk + r * \(expandedRowFloats)")
                body.close()
            }
        }

        func emitBand(start: String, rowCount: Int) {
            body.open("")
            if block.expand != nil {
                // The expanded rows that this band's depthwise windows read, up to the last one.
                let reach = (rowCount - 1) * strideHeight - padTop + kh - 1
                body.line("int last_row = \(CExpression.sum([CExpression.times(start, strideHeight), String(reach)]));")
                body.line("if (last_row > \(expandedHeight - 1)) last_row = \(expandedHeight - 1);")
                body.open("for (; next <= \(chunkRows == 1 ? "last_row" : "last_row / \(chunkRows)"); ++next)")
                let slot = ringChunks == 1 ? "ring" : "ring + next % \(ringChunks) * \(chunkRows * expandedRowFloats)"
                body.line("float *restrict chunk = \(slot);")
                let fullChunks = expandedHeight / chunkRows, lastRows = expandedHeight % chunkRows
                if lastRows == 0 {
                    emitChunk(rowCount: chunkRows)
                } else {
                    body.open("if (next < \(fullChunks))")
                    emitChunk(rowCount: chunkRows)
                    body.openElse()
                    emitChunk(rowCount: lastRows)
                    body.close()
                }
                body.close()
            }

            body.openFor("r", to: rowCount)
            body.line("const int iy0 = \(CExpression.sum([CExpression.times(start, strideHeight), CExpression.times("r", strideHeight), String(-padTop)]));")
            body.line("const int ky0 = iy0 < 0 ? -iy0 : 0;")
            body.line("const int ky1 = iy0 + \(kh) > \(expandedHeight) ? \(expandedHeight) - iy0 : \(kh);")
            // Rows outside the tensor are never read; they point at its start.
            body.line("const float *rows[\(kh)];")
            body.openFor("ky", to: kh)
            if block.expand != nil {
                var address = "ring"
                if ringChunks > 1 {
                    let chunk = chunkRows == 1 ? "(iy0 + ky)" : "(iy0 + ky) / \(chunkRows)"
                    address += " + \(chunk) % \(ringChunks) * \(chunkRows * expandedRowFloats)"
                }
                if chunkRows > 1 {
                    address += " + (iy0 + ky) % \(chunkRows) * \(expandedRowFloats)"
                }
                body.line("rows[ky] = ky >= ky0 && ky < ky1 ? \(address) : ring;")
            } else {
                body.line("rows[ky] = ky >= ky0 && ky < ky1 ? x + (iy0 + ky) * \(expandedRowFloats) : x;")
            }
            body.close()
            // With a squeeze-excitation the band buffer contains every output row.
            let bandRow = excitation == nil ? "r" : CExpression.sum([start, "r"])
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
                // The channel sums of the squeeze-excitation, while the row is in L1.
                body.line("const float *restrict filtered = \(rowOutput);")
                body.openFor("p", to: output.width)
                body.openFor("c", to: channels)
                body.line("pooled[c] += filtered[p * \(channels) + c];")
                body.close()
                body.close()
            }
            body.close()
            guard excitation == nil else {
                body.close()
                return
            }

            let outputOffset = CExpression.times(start, output.width * project.outChannels)
            let channelList = emitNonzeroChannels(&body, pixels: String(rowCount * output.width), channels: channels)
            emitPointwiseGEMM(&body, pixels: rowCount * output.width, inputChannels: channels, outputChannels: project.outChannels,
                              x: "band", weights: "project_w", bias: project.hasBias ? "project_bias" : nil,
                              residual: hasResidual ? CExpression.offset("residual", outputOffset) : nil,
                              y: CExpression.offset("y", outputOffset), activation: project.activation,
                              channelList: channelList)
            body.close()
        }

        let fullBands = output.height / bandRows, lastRows = output.height % bandRows
        if fullBands == 1 {
            emitBand(start: "0", rowCount: bandRows)
        } else if fullBands > 1 {
            body.openFor("oy0", to: fullBands * bandRows, step: bandRows)
            emitBand(start: "oy0", rowCount: bandRows)
            body.close()
        }
        if lastRows > 0 {
            emitBand(start: String(fullBands * bandRows), rowCount: lastRows)
        }
        if let se = block.squeezeExcite, let excitation {
            emitExcitationAndProjection(&body, se: se, project: project, scratch: excitation, schedule: schedule, output: output,
                                        hasResidual: hasResidual)
        }
    }

    /// Writes the list of the band buffer's channels that the projection sums over, those not zero
    /// in every one of the band's `pixels` (a C expression), and returns it for the GEMM.
    mutating func emitNonzeroChannels(_ body: inout CWriter, pixels: String, channels: Int) -> ChannelList {
        use(.nonzeroChannels)
        return ChannelList.emitNonzero(&body, x: "band", pixels: pixels, channels: channels)
    }

    /// Writes the squeeze-excitation's gate from the channel sums in `pooled`, the gate's scaling
    /// and the projection of the whole depthwise output in `band`.
    private mutating func emitExcitationAndProjection(_ body: inout CWriter, se: SqueezeExcite, project: Conv2D,
                                                      scratch: (hidden: Int, gate: Int, total: Int), schedule: FusedBlockSchedule,
                                                      output: CTensor, hasResidual: Bool) {
        use(.matrixVector)
        let channels = se.channels, pixels = output.pixels, base = schedule.ringFloats + schedule.bandFloats
        body.line("float *restrict hidden = scratch + \(base + scratch.hidden);")
        body.line("float *restrict gate = scratch + \(base + scratch.gate);")
        body.openFor("c", to: channels)
        body.line("pooled[c] /= \(CExpression.float(Float(pixels)));")
        body.close()
        body.line("matrix_vector_f32(pooled, se_fc1_w, se_fc1_bias, hidden, \(se.squeezeChannels), \(channels), 1, \(activationConstant(se.activation)));")
        body.line("matrix_vector_f32(hidden, se_fc2_w, se_fc2_bias, gate, \(channels), \(se.squeezeChannels), 1, \(activationConstant(se.gate)));")

        let weights: String
        if schedule.scalesWeights {
            // Row k of every weight panel multiplies input channel k, so it is scaled by gate[k].
            body.line("float *restrict scaled = scratch + \(base + scratch.total);")
            for panel in tileSegments(variable: "n", extent: project.outChannels, step: weightPanelWidth) {
                if panel.isLoop { body.openFor(panel.variable, to: panel.end, step: panel.count) }
                let panelStart = CExpression.times(panel.start, channels)
                body.openFor("k", to: channels)
                body.openFor("j", to: panel.count)
                let index = CExpression.sum([panelStart, "k * \(panel.count)", "j"])
                body.line("scaled[\(index)] = project_w[\(index)] * gate[k];")
                body.close()
                body.close()
                if panel.isLoop { body.close() }
            }
            weights = "scaled"
        } else {
            body.openFor("p", to: pixels)
            body.openFor("c", to: channels)
            body.line("band[p * \(channels) + c] *= gate[c];")
            body.close()
            body.close()
            weights = "project_w"
        }
        // A channel that is zero in every pixel stays zero after the gate.
        let channelList = emitNonzeroChannels(&body, pixels: String(pixels), channels: channels)
        emitPointwiseGEMM(&body, pixels: pixels, inputChannels: channels, outputChannels: project.outChannels, x: "band",
                          weights: weights, bias: project.hasBias ? "project_bias" : nil, residual: hasResidual ? "residual" : nil,
                          y: "y", activation: project.activation, channelList: channelList)
    }

    /// Writes a fused block as three convolution kernels on whole tensors in scratch, for weights
    /// in other layouts than the packed ones (a pipeline without weight packing) and for a first
    /// stage on the network's planar input.
    private mutating func emitStagewiseBlock(_ body: inout CWriter, _ node: Node, _ block: FusedBlock, schedule: FusedBlockSchedule,
                                             input: CTensor, output: CTensor, residual: CTensor?) throws {
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
        for (prefix, conv) in block.stages {
            if prefix == "project", let se = block.squeezeExcite {
                let kernel = squeezeExcite(se, input: stageInput, output: stageInput)
                body.line("\(kernel)(\(stageValue), se_fc1_w, se_fc1_bias, se_fc2_w, se_fc2_bias, excitation, gated);")
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
            let kernel = convolution(conv, weightLayout: layout, input: stageInput, output: stageOutput,
                                     residual: conv.hasResidual ? residual : nil)
            var arguments = [stageValue, cArgumentName("\(prefix).weight")]
            if conv.hasBias { arguments.append(cArgumentName("\(prefix).bias")) }
            if conv.hasResidual { arguments.append("residual") }
            arguments.append(target)
            body.line("\(kernel)(\(arguments.joined(separator: ", ")));")
            stageInput = stageOutput
            stageValue = target
        }
    }
}

/// Returns the C parameter name of a fused block's parameter role: `expand.weight` is
/// `expand_w`, `se.fc1.bias` is `se_fc1_bias`.
func cArgumentName(_ role: String) -> String {
    let name = role.replacingOccurrences(of: ".", with: "_")
    return name.hasSuffix("_weight") ? String(name.dropLast("eight".count)) : name
}
