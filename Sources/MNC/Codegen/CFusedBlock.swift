/// The C kernel of a fused inverted-residual block: expansion, depthwise and projection
/// convolutions computed a band of output rows at a time. The expanded tensor, up to six times
/// wider than the block's input and output, never reaches memory whole.
///
/// Schedule, for bands of `bandRows` output rows from the top:
/// 1. The expansion writes rows of the expanded tensor E into a ring of `ringChunks` chunks of
///    `chunkRows` rows each, one chunk per step, until E's rows up to the last one that the band's
///    depthwise windows read are there. Chunk j holds E rows `[j·chunkRows, (j+1)·chunkRows)` in
///    slot `j mod ringChunks`; the ring is large enough that no chunk a band reads is overwritten
///    before the band is done.
/// 2. The depthwise convolution reads E's rows from the ring (or the block's input when there is
///    no expansion) and writes the band's rows into a band buffer.
/// 3. The projection (with the residual) reads the band buffer as a GEMM and writes the output rows.
/// The ring and the band buffer are the node's scratch area.

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
    /// Floats of the band buffer (the whole depthwise output when not streaming), a multiple of 16.
    var bandFloats: Int

    var scratchFloats: Int { ringFloats + bandFloats }
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
    guard packed && !(readsChannelsLast && node.inputs[0] == 0) else {
        let ring = block.expand == nil ? 0 : align(expandedHeight * expandedWidth * channels, 16)
        return FusedBlockSchedule(streams: false, bandRows: outputHeight, chunkRows: expandedHeight, ringChunks: 1,
                                  ringFloats: ring, bandFloats: align(outputHeight * outputWidth * channels, 16))
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
    return FusedBlockSchedule(streams: true, bandRows: bandRows, chunkRows: chunkRows, ringChunks: ringChunks,
                              ringFloats: ring, bandFloats: align(bandRows * outputWidth * channels, 16))
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

        var parameters = [inputParameter]
        var stages: [String] = []
        for (prefix, conv) in block.stages {
            parameters.append(constParameter("\(prefix)_w"))
            if conv.hasBias { parameters.append(constParameter("\(prefix)_bias")) }
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
            let row = DepthwiseRow(conv: depthwise, inputWidth: expandedWidth, outputWidth: output.width, channels: channels,
                                   rows: "rows", weights: "depthwise_w", bias: depthwise.hasBias ? "depthwise_bias" : nil,
                                   output: "band + r * \(output.width * channels)", residual: nil)
            body.open("if (ky0 == 0 && ky1 == \(kh))")
            emitDepthwiseRow(&body, row, ky0: "0", ky1: "\(kh)")
            body.openElse()
            emitDepthwiseRow(&body, row, ky0: "ky0", ky1: "ky1")
            body.close()
            body.close()

            let outputOffset = CExpression.times(start, output.width * project.outChannels)
            emitPointwiseGEMM(&body, pixels: rowCount * output.width, inputChannels: channels, outputChannels: project.outChannels,
                              x: "band", weights: "project_w", bias: project.hasBias ? "project_bias" : nil,
                              residual: hasResidual ? CExpression.offset("residual", outputOffset) : nil,
                              y: CExpression.offset("y", outputOffset), activation: project.activation)
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
        for (prefix, conv) in block.stages {
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
            var arguments = [stageValue, "\(prefix)_w"]
            if conv.hasBias { arguments.append("\(prefix)_bias") }
            if conv.hasResidual { arguments.append("residual") }
            arguments.append(target)
            body.line("\(kernel)(\(arguments.joined(separator: ", ")));")
            stageInput = stageOutput
            stageValue = target
        }
    }
}
