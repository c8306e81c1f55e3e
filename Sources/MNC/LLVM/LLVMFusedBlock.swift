import CLLVM

/// The LLVM kernel of a fused inverted-residual block that streams (`FusedBlockSchedule.streams`).
/// It follows the C kernel (`CKernelLibrary.fusedBlock`) step by step, with the same bands,
/// chunks, ring slots and scratch layout, so the C backend's arena plan serves both backends:
/// 1. Before each band, the expansion writes the chunks of expanded rows that the band's
///    depthwise windows reach into the ring (chunk j in slot `j mod ringChunks`).
/// 2. The depthwise convolution reads its rows from the ring (or the block's input when there is
///    no expansion) and writes the band's rows into the band buffer.
/// 3. The projection GEMM (with the residual) reads the band buffer and writes the output rows.
/// With a squeeze-excitation, the band buffer contains the whole depthwise output, the channel sums
/// accumulate row by row, and the gate and the projection run once after the last band.
/// Blocks that do not stream run as separate stage kernels (`LLVMNodeEmitter`).
extension LLVMKernelLibrary {
    /// Defines the kernel of the streaming fused block `node`. Arguments: x, then the parameters in
    /// `FusedBlock.cParameterRoles` order, [residual], scratch, y.
    func fusedBlock(_ node: Node, _ block: FusedBlock, schedule: FusedBlockSchedule, input: CTensor, output: CTensor,
                    hasResidual: Bool, alignments: [Int]) -> LLVMValue {
        var arguments = [Argument(name: "x", bytes: input.count * 4, alignment: 0)]
        for role in block.cParameterRoles {
            arguments.append(Argument(name: cArgumentName(role), bytes: (node.parameter(role)?.elementCount ?? 0) * 4, alignment: 0))
        }
        if hasResidual { arguments.append(Argument(name: "residual", bytes: output.count * 4, alignment: 0)) }
        arguments.append(Argument(name: "scratch", bytes: schedule.scratchFloats * 4, alignment: 0, isOutput: true))
        arguments.append(Argument(name: "y", bytes: output.count * 4, alignment: 0, isOutput: true))
        for index in arguments.indices { arguments[index].alignment = alignments[index] }

        let name = "block_f32_\(input.label)_to_\(output.label)" + (hasResidual ? "_residual" : "")
        // Blocks between tensors of the same shapes may still differ in kernels, activations and
        // the squeeze-excitation, so the whole block and its schedule tell kernels apart.
        let variant = "\(block) \(schedule) \(input.layout)"
        return kernel(name, variant: variant, arguments) {
            var parameters: [String: LLVMValue] = [:]
            for (position, role) in block.cParameterRoles.enumerated() {
                parameters[role] = code.parameter(position + 1)
            }
            let residual = hasResidual ? code.parameter(arguments.count - 3) : nil
            let stream = FusedBlockStream(kernels: self, block: block, schedule: schedule, input: input, output: output,
                                          x: code.parameter(0), parameters: parameters, residual: residual,
                                          scratch: code.parameter(arguments.count - 2), y: code.parameter(arguments.count - 1))
            stream.emit()
        }
    }
}

/// The body of a streaming fused-block kernel, emitted into the current function.
private struct FusedBlockStream {
    let kernels: LLVMKernelLibrary
    let block: FusedBlock
    let schedule: FusedBlockSchedule
    let input: CTensor
    let output: CTensor
    let x: LLVMValue
    /// The kernel's parameter pointers by role (`expand.weight`, `se.fc1.bias`, ...).
    let parameters: [String: LLVMValue]
    let residual: LLVMValue?
    let scratch: LLVMValue
    let y: LLVMValue

    var code: LLVMFunctionBuilder { kernels.code }
    var channels: Int { block.depthwise.inChannels }
    /// Floats of one expanded row, NHWC.
    var expandedRowFloats: Int { block.expandedWidth * channels }
    var ring: LLVMValue { scratch }
    var band: LLVMValue { code.element(scratch, schedule.ringFloats) }
    /// The squeeze-excitation's channel sums, then means, at the start of its scratch.
    var pooled: LLVMValue { code.element(scratch, schedule.ringFloats + schedule.bandFloats) }

    func emit() {
        if block.squeezeExcite != nil {
            let pooled = self.pooled
            code.loop(from: 0, to: channels) { c in code.store(code.float(0), pooled, c) }
        }
        let bandRows = schedule.bandRows
        let fullBands = output.height / bandRows, lastRows = output.height % bandRows
        // `next` is the first chunk of expanded rows not computed yet.
        var next = code.index(0)
        if fullBands == 1 {
            next = emitBand(start: code.index(0), rowCount: bandRows, next: next)
        } else if fullBands > 1 {
            next = code.loop(from: 0, to: fullBands * bandRows, step: bandRows, carrying: [next]) { start, carried in
                [emitBand(start: start, rowCount: bandRows, next: carried[0])]
            }[0]
        }
        if lastRows > 0 {
            _ = emitBand(start: code.index(fullBands * bandRows), rowCount: lastRows, next: next)
        }
        if let se = block.squeezeExcite {
            emitExcitationAndProjection(se)
        }
    }

    /// Emits the band of `rowCount` output rows from row `start` and returns the next chunk to compute.
    private func emitBand(start: LLVMValue, rowCount: Int, next: LLVMValue) -> LLVMValue {
        let depthwise = block.depthwise
        let kh = depthwise.kernelHeight, strideHeight = depthwise.strideHeight, padTop = depthwise.padding.top
        let expandedHeight = block.expandedHeight
        var following = next
        if block.expand != nil {
            // The expanded rows that this band's depthwise windows read, up to the last one.
            let reach = (rowCount - 1) * strideHeight - padTop + kh - 1
            let lastRow = code.minimum(code.add(code.mul(start, strideHeight), reach), code.index(expandedHeight - 1))
            let end = code.add(code.divide(lastRow, schedule.chunkRows), 1)
            code.loop(from: next, to: end) { chunk in emitChunk(chunk) }
            following = code.maximum(next, end)
        }

        let outputRowFloats = output.width * channels
        let hasExcitation = block.squeezeExcite != nil
        code.loop(from: 0, to: rowCount) { r in
            let oy = code.add(start, r)
            let iy0 = code.add(code.mul(oy, strideHeight), -padTop)
            let ky0 = code.maximum(code.negate(iy0), code.index(0))
            let ky1 = code.minimum(code.sub(code.index(expandedHeight), iy0), code.index(kh))
            // With a squeeze-excitation the band buffer contains every output row.
            let rowOutput = code.element(band, code.mul(hasExcitation ? oy : r, outputRowFloats))
            let inputRow = { (ky: LLVMValue) in self.expandedRow(code.add(iy0, ky)) }
            func depthwiseRow(clipped: Bool) {
                kernels.emitDepthwiseRow(depthwise, inputWidth: block.expandedWidth, outputWidth: output.width,
                                         inputRow: inputRow, rowTaps: clipped ? (ky0, ky1) : nil,
                                         w: parameter("depthwise.weight"), bias: optionalParameter("depthwise.bias"),
                                         residual: nil, y: rowOutput)
            }
            let whole = code.and(code.compare(LLVMIntEQ, ky0, code.index(0)), code.compare(LLVMIntEQ, ky1, code.index(kh)))
            code.ifThen(whole, { depthwiseRow(clipped: false) }, else: { depthwiseRow(clipped: true) })
            if hasExcitation {
                // The channel sums of the squeeze-excitation, while the row is in L1.
                let pooled = self.pooled
                code.loop(from: 0, to: output.width) { p in
                    code.loop(from: 0, to: channels) { c in
                        let value = code.load(rowOutput, code.add(code.mul(p, channels), c))
                        code.store(code.fadd(code.load(pooled, c), value), pooled, c)
                    }
                }
            }
        }
        guard !hasExcitation else { return following }

        let project = block.project
        let outputOffset = code.mul(start, output.width * project.outChannels)
        kernels.emitPointwiseGEMM(x: band, w: parameter("project.weight"), weightLayout: .inputOutputPanels,
                                  bias: optionalParameter("project.bias"), residual: residual.map { code.element($0, outputOffset) },
                                  y: code.element(y, outputOffset), pixels: rowCount * output.width, inputChannels: channels,
                                  outputChannels: project.outChannels, activation: project.activation)
        return following
    }

    /// Returns the pointer to expanded row `row` (inside the tensor): a row of the ring, or of the
    /// block's input when there is no expansion.
    private func expandedRow(_ row: LLVMValue) -> LLVMValue {
        guard block.expand != nil else { return code.element(x, code.mul(row, expandedRowFloats)) }
        let chunkRows = schedule.chunkRows, ringChunks = schedule.ringChunks
        let slot = code.remainder(code.divide(row, chunkRows), ringChunks)
        let offset = code.add(code.mul(slot, chunkRows * expandedRowFloats), code.mul(code.remainder(row, chunkRows), expandedRowFloats))
        return code.element(ring, offset)
    }

    /// Emits the expansion of chunk `chunk` into its ring slot: `chunkRows` expanded rows, fewer
    /// for a partial last chunk.
    private func emitChunk(_ chunk: LLVMValue) {
        guard let expand = block.expand else { return }
        let chunkRows = schedule.chunkRows
        let slot = code.element(ring, code.mul(code.remainder(chunk, schedule.ringChunks), chunkRows * expandedRowFloats))
        let fullChunks = block.expandedHeight / chunkRows, lastRows = block.expandedHeight % chunkRows

        func rows(_ rowCount: Int) {
            let firstRow = code.mul(chunk, chunkRows)
            let weights = parameter("expand.weight"), bias = optionalParameter("expand.bias")
            if packedLayout(expand) == .inputOutputPanels {
                kernels.emitPointwiseGEMM(x: code.element(x, code.mul(firstRow, input.width * input.channels)), w: weights,
                                          weightLayout: .inputOutputPanels, bias: bias, residual: nil, y: slot,
                                          pixels: rowCount * block.expandedWidth, inputChannels: expand.inChannels,
                                          outputChannels: channels, activation: expand.activation)
            } else {
                kernels.emitConvolutionRows(expand, weightLayout: packedLayout(expand), input: input,
                                            outputWidth: block.expandedWidth, rows: (firstRow, rowCount), x: x, w: weights,
                                            bias: bias, residual: nil, y: slot)
            }
        }
        if lastRows == 0 {
            rows(chunkRows)
        } else {
            code.ifThen(code.compare(LLVMIntSLT, chunk, code.index(fullChunks)), { rows(chunkRows) }, else: { rows(lastRows) })
        }
    }

    /// Emits the squeeze-excitation's gate from the channel sums, the gate's scaling and the
    /// projection of the whole depthwise output in the band buffer.
    private func emitExcitationAndProjection(_ se: SqueezeExcite) {
        let project = block.project
        let floats = CKernelLibrary.squeezeExciteScratchFloats(se)
        let base = schedule.ringFloats + schedule.bandFloats
        let pooled = self.pooled, band = self.band
        let hidden = code.element(scratch, base + floats.hidden), gate = code.element(scratch, base + floats.gate)
        let pixels = output.pixels
        code.loop(from: 0, to: channels) { c in
            code.store(code.fdiv(code.load(pooled, c), code.float(Float(pixels))), pooled, c)
        }
        kernels.matrixVector(x: pooled, w: parameter("se.fc1.weight"), bias: parameter("se.fc1.bias"), y: hidden,
                             outputs: se.squeezeChannels, inputs: channels, activation: se.activation)
        kernels.matrixVector(x: hidden, w: parameter("se.fc2.weight"), bias: parameter("se.fc2.bias"), y: gate,
                             outputs: channels, inputs: se.squeezeChannels, activation: se.gate)

        var weights = parameter("project.weight")
        if schedule.scalesWeights {
            // Row k of every weight panel multiplies input channel k, so it is scaled by gate[k].
            let scaled = code.element(scratch, base + floats.total), original = weights
            for panel in kernels.tileSegments(extent: project.outChannels, step: weightPanelWidth) {
                kernels.forSegment(panel) { panelStart in
                    let panelBase = code.mul(panelStart, channels)
                    code.loop(from: 0, to: channels) { k in
                        let factor = code.load(gate, k)
                        let row = code.add(panelBase, code.mul(k, panel.count))
                        code.loop(from: 0, to: panel.count) { j in
                            let index = code.add(row, j)
                            code.store(code.fmul(code.load(original, index), factor), scaled, index)
                        }
                    }
                }
            }
            weights = scaled
        } else {
            code.loop(from: 0, to: pixels) { p in
                code.loop(from: 0, to: channels) { c in
                    let index = code.add(code.mul(p, channels), c)
                    code.store(code.fmul(code.load(band, index), code.load(gate, c)), band, index)
                }
            }
        }
        kernels.emitPointwiseGEMM(x: band, w: weights, weightLayout: .inputOutputPanels, bias: optionalParameter("project.bias"),
                                  residual: residual, y: y, pixels: pixels, inputChannels: channels,
                                  outputChannels: project.outChannels, activation: project.activation)
    }

    private func parameter(_ role: String) -> LLVMValue {
        // The kernel's arguments come from `cParameterRoles`, which lists every weight, the
        // squeeze-excitation's biases and each bias a convolution has.
        guard let value = parameters[role] else { preconditionFailure("fused block kernel without parameter '\(role)'") }
        return value
    }

    private func optionalParameter(_ role: String) -> LLVMValue? {
        parameters[role]
    }
}
