import CLLVM

/// Per-shape kernels as LLVM functions: one internal function per distinct op, shape and
/// argument alignment. They mirror the C backend's kernels in loop structure, weight layouts
/// and float formulas, and take their arguments in the same order: the op's inputs, its
/// parameters in the node's parameter order, its scratch area, then the output `y`.
///
/// Every bound, stride and offset is a constant. The convolution kernels keep their
/// accumulators in explicit `<N x float>` vectors, N being the lanes LLVM's vectorizer
/// picks for the target (`LLVMTarget.floatLanes`); LLVM's type legalization maps them to
/// the target's registers, or to scalar code where it has no vector unit. The other
/// kernels are scalar loops on `noalias` pointers that LLVM's loop vectorizer vectorizes.
final class LLVMKernelLibrary {
    let code: LLVMFunctionBuilder
    let target: LLVMTarget
    private var functions: [String: LLVMValue] = [:]
    private var usedNames: Set<String> = []

    init(code: LLVMFunctionBuilder, target: LLVMTarget) {
        self.code = code
        self.target = target
    }

    /// A kernel argument: the tensor's bytes and the alignment known at the call site.
    struct Argument {
        var name: String
        var bytes: Int
        var alignment: Int
        var isOutput: Bool = false
    }

    /// Returns the kernel for `name`, `variant` and these arguments, defining it with `body`
    /// the first time. `variant` names what the name leaves out (a BatchNorm's epsilon), and
    /// kernels that differ only in it or in argument alignment get numbered names.
    func kernel(_ name: String, variant: String = "", _ arguments: [Argument], body: () -> Void) -> LLVMValue {
        let key = name + "/" + variant + arguments.map { "/\($0.alignment)" }.joined()
        if let existing = functions[key] { return existing }
        var unique = name
        var suffix = 2
        while usedNames.contains(unique) {
            unique = "\(name)_\(suffix)"
            suffix += 1
        }
        usedNames.insert(unique)
        let parameters = arguments.map { argument in
            LLVMFunctionBuilder.Parameter(
                name: argument.name,
                role: argument.isOutput ? .output(bytes: argument.bytes, alignment: argument.alignment)
                    : .input(bytes: argument.bytes, alignment: argument.alignment))
        }
        let function = code.defineFunction(name: unique, parameters: parameters, cpu: target.cpu, features: target.features, body: body)
        functions[key] = function
        return function
    }

    // MARK: - Blocking

    /// Splits `count` consecutive floats into vector widths of at most `floatLanes`.
    private func blockWidths(_ count: Int) -> [Int] {
        let lanes = target.floatLanes
        var widths = Array(repeating: lanes, count: count / lanes)
        if count % lanes > 0 { widths.append(count % lanes) }
        return widths
    }

    /// Offsets of the blocks that `widths` splits a run of floats into.
    private func blockOffsets(_ widths: [Int]) -> [Int] {
        var offsets: [Int] = []
        var offset = 0
        for width in widths {
            offsets.append(offset)
            offset += width
        }
        return offsets
    }

    /// Emits `body(start, widths)` over `0..<count` floats: a loop over chunks of
    /// `vectorsPerChunk` full vectors, then one call for the remaining floats.
    private func channelChunks(_ count: Int, vectorsPerChunk: Int, _ body: (LLVMValue, [Int]) -> Void) {
        let chunk = target.floatLanes * vectorsPerChunk
        let whole = count - count % chunk
        if whole > 0 {
            let widths = Array(repeating: target.floatLanes, count: vectorsPerChunk)
            if whole == chunk {
                body(code.index(0), widths)
            } else {
                code.loop(from: 0, to: whole, step: chunk) { start in body(start, widths) }
            }
        }
        if whole < count {
            body(code.index(whole), blockWidths(count - whole))
        }
    }

    private func initialAccumulators(bias: LLVMValue?, start: LLVMValue, widths: [Int]) -> [LLVMValue] {
        zip(widths, blockOffsets(widths)).map { width, offset in
            bias.map { code.load($0, code.add(start, offset), width: width) } ?? code.float(0, width: width)
        }
    }

    /// Applies the activation, adds the residual at `index` and stores at `y[index]`.
    private func storeEpilogue(_ accumulator: LLVMValue, activation: Activation, residual: LLVMValue?,
                               y: LLVMValue, index: LLVMValue) {
        var value = code.activate(accumulator, activation)
        if let residual {
            value = code.fadd(value, code.load(residual, index, width: code.widthOf(accumulator)))
        }
        code.store(value, y, index)
    }

    private func tensorIndex(_ tensor: CTensor, pixel: LLVMValue, channel: LLVMValue) -> LLVMValue {
        if tensor.isChannelsLast {
            return code.add(code.mul(pixel, tensor.channels), channel)
        }
        return code.add(code.mul(channel, tensor.pixels), pixel)
    }

    // MARK: - Convolutions

    /// Defines the kernel of a 1×1, stride-1, unpadded convolution on NHWC input with `io` or
    /// `io_panels` weights: the GEMM `y[P][N] = x[P][K] · w[K][N]` (see `emitPointwiseGEMM`).
    /// Arguments: x, w, [bias], [residual], y.
    func pointwiseConvolution(input: CTensor, outputChannels: Int, weightLayout: WeightLayout, hasBias: Bool,
                              activation: Activation, hasResidual: Bool, alignments: [Int]) -> LLVMValue {
        let pixels = input.pixels, inputChannels = input.channels, n = outputChannels
        var arguments = [Argument(name: "x", bytes: input.count * 4, alignment: 0),
                         Argument(name: "w", bytes: inputChannels * n * 4, alignment: 0)]
        if hasBias { arguments.append(Argument(name: "bias", bytes: n * 4, alignment: 0)) }
        if hasResidual { arguments.append(Argument(name: "residual", bytes: pixels * n * 4, alignment: 0)) }
        arguments.append(Argument(name: "y", bytes: pixels * n * 4, alignment: 0, isOutput: true))
        arguments = zip(arguments, alignments).map { argument, alignment in
            var copy = argument
            copy.alignment = alignment
            return copy
        }

        let name = "pointwise_f32_\(input.label)_to_\(n)" + llvmActivationSuffix(activation)
            + (hasResidual ? "_residual" : "") + (hasBias ? "" : "_nobias")
        return kernel(name, variant: weightLayout.rawValue, arguments) {
            emitPointwiseGEMM(x: code.parameter(0), w: code.parameter(1), weightLayout: weightLayout,
                              bias: hasBias ? code.parameter(2) : nil,
                              residual: hasResidual ? code.parameter(hasBias ? 3 : 2) : nil,
                              y: code.parameter(arguments.count - 1), pixels: pixels, inputChannels: inputChannels,
                              outputChannels: n, activation: activation)
        }
    }

    /// Emits, into the current function, the GEMM `y[P][N] = x[P][K] · w[K][N]` with
    /// `P = pixels` rows of x and y and `io` or `io_panels` weights, in register tiles of
    /// rows × (2 vectors) accumulators, with bias, activation and residual in each tile's
    /// epilogue. Tiles never cross a weight panel: their column count divides the panel width.
    func emitPointwiseGEMM(x: LLVMValue, w: LLVMValue, weightLayout: WeightLayout, bias: LLVMValue?, residual: LLVMValue?,
                           y: LLVMValue, pixels: Int, inputChannels: Int, outputChannels n: Int, activation: Activation) {
        let lanes = target.floatLanes
        var tileColumns = min(lanes >= 4 ? 2 * lanes : 4, weightPanelWidth)
        while weightPanelWidth % tileColumns != 0 { tileColumns -= 1 }
        // Rows × 2 vector accumulators plus 2 weight vectors and a broadcast fit the registers.
        var maximumRows = target.vectorRegisters >= 32 ? 8 : 6
        if lanes < 4 { maximumRows = 4 }
        let minimumRows = max(maximumRows - 2, 1)
        func padded(_ rows: Int) -> Int { (pixels + rows - 1) / rows * rows }
        let tileRows = (minimumRows...maximumRows).reversed().min { padded($0) < padded($1) } ?? maximumRows

        func tile(pixel: LLVMValue, rows: Int, column: LLVMValue, columns: Int) {
            let widths = blockWidths(columns)
            let offsets = blockOffsets(widths)
            let (weightBase, weightStride) = weightColumn(column, layout: weightLayout, inputChannels: inputChannels,
                                                          outputChannels: n)
            let start = initialAccumulators(bias: bias, start: column, widths: widths)
            let initial = (0..<rows).flatMap { _ in start }
            let result = code.loop(from: 0, to: inputChannels, carrying: initial) { k, accumulators in
                let row = code.add(code.mul(k, weightStride), weightBase)
                let weights = zip(widths, offsets).map { width, offset in code.load(w, code.add(row, offset), width: width) }
                var next: [LLVMValue] = []
                for r in 0..<rows {
                    let scalar = code.load(x, code.add(code.mul(code.add(pixel, r), inputChannels), k))
                    var splats: [Int: LLVMValue] = [:]
                    for (b, width) in widths.enumerated() {
                        let broadcast = splats[width] ?? code.splat(scalar, width: width)
                        splats[width] = broadcast
                        next.append(code.fmuladd(broadcast, weights[b], accumulators[r * widths.count + b]))
                    }
                }
                return next
            }
            for r in 0..<rows {
                let rowStart = code.add(code.mul(code.add(pixel, r), n), column)
                for (b, offset) in offsets.enumerated() {
                    storeEpilogue(result[r * widths.count + b], activation: activation, residual: residual, y: y,
                                  index: code.add(rowStart, offset))
                }
            }
        }

        // Loop order as in the C backend: a weight matrix that fits in L1 stays there while
        // row tiles stream past it. Otherwise the order that moves fewer bytes wins.
        let weightBytes = inputChannels * n * 4, inputBytes = pixels * inputChannels * 4
        let rowTiles = (pixels + tileRows - 1) / tileRows
        let panels = (n + tileColumns - 1) / tileColumns
        let panelsOutside = weightBytes > 32 * 1024 && inputBytes * panels + weightBytes < weightBytes * rowTiles + inputBytes
        let rowSegments = tileSegments(extent: pixels, step: tileRows)
        let columnSegments = tileSegments(extent: n, step: tileColumns)
        let (outer, inner) = panelsOutside ? (columnSegments, rowSegments) : (rowSegments, columnSegments)
        for outerSegment in outer {
            forSegment(outerSegment) { outerStart in
                for innerSegment in inner {
                    forSegment(innerSegment) { innerStart in
                        let (pixel, column) = panelsOutside ? (innerStart, outerStart) : (outerStart, innerStart)
                        let (rows, columns) = panelsOutside ? (innerSegment.count, outerSegment.count)
                            : (outerSegment.count, innerSegment.count)
                        tile(pixel: pixel, rows: rows, column: column, columns: columns)
                    }
                }
            }
        }
    }

    /// Returns where column `column` of a 1×1 convolution's `[K][N]` weights starts and its
    /// stride: `w[k][column]` is at `base + k · stride`. The columns `column ..< column + m` follow it
    /// when no panel boundary (a multiple of `weightPanelWidth`) lies inside them. `hwio` weights
    /// use the `io` formula for their first tap.
    func weightColumn(_ column: LLVMValue, layout: WeightLayout, inputChannels: Int, outputChannels n: Int)
        -> (base: LLVMValue, stride: LLVMValue) {
        guard layout == .inputOutputPanels else { return (column, code.index(n)) }
        // Panel p holds columns [32p, 32p + width) as [K][width], from float 32p · K on.
        if let constant = code.constantValue(column) {
            let panelStart = constant - constant % weightPanelWidth
            return (code.index(panelStart * (inputChannels - 1) + constant), code.index(min(weightPanelWidth, n - panelStart)))
        }
        let panelStart = code.and(column, code.index(-weightPanelWidth))
        let base = code.add(code.mul(panelStart, inputChannels - 1), column)
        if n % weightPanelWidth == 0 { return (base, code.index(weightPanelWidth)) }
        return (base, code.minimum(code.sub(code.index(n), panelStart), code.index(weightPanelWidth)))
    }

    /// Defines the kernel of a depthwise convolution on NHWC input with `hwc` weights, one output
    /// row at a time (see `emitDepthwiseRow`). Rows whose window lies inside the input use
    /// constant row taps, the border rows clip them at run time.
    /// Arguments: x, w, [bias], [residual], y.
    func depthwiseConvolution(_ conv: Conv2D, input: CTensor, output: CTensor, hasResidual: Bool,
                              alignments: [Int]) -> LLVMValue {
        let channels = input.channels, kh = conv.kernelHeight, kw = conv.kernelWidth
        let arguments = convolutionArguments(conv, input: input, output: output, weightCount: kh * kw * channels,
                                             hasResidual: hasResidual, alignments: alignments)
        let name = "depthwise\(kh)x\(kw)_\(llvmStrideLabel(conv))_f32_\(input.label)_\(llvmPaddingLabel(conv.padding))"
            + llvmActivationSuffix(conv.activation) + (hasResidual ? "_residual" : "") + (conv.hasBias ? "" : "_nobias")
        return kernel(name, arguments) {
            let x = code.parameter(0), w = code.parameter(1)
            let bias = conv.hasBias ? code.parameter(2) : nil
            let residual = hasResidual ? code.parameter(conv.hasBias ? 3 : 2) : nil
            let y = code.parameter(arguments.count - 1)
            let inputRowFloats = input.width * channels, outputRowFloats = output.width * channels

            func row(_ oy: LLVMValue, clipped: Bool) {
                let iy0 = code.add(code.mul(oy, conv.strideHeight), -conv.padding.top)
                let rowTaps = clipped
                    ? (code.maximum(code.negate(iy0), code.index(0)),
                       code.minimum(code.sub(code.index(input.height), iy0), code.index(kh)))
                    : nil
                let outputOffset = code.mul(oy, outputRowFloats)
                emitDepthwiseRow(conv, inputWidth: input.width, outputWidth: output.width,
                                 inputRow: { ky in code.element(x, code.mul(code.add(iy0, ky), inputRowFloats)) },
                                 rowTaps: rowTaps, w: w, bias: bias, residual: residual.map { code.element($0, outputOffset) },
                                 y: code.element(y, outputOffset))
            }
            let rows = interiorRange(output: output.height, stride: conv.strideHeight, padding: conv.padding.top,
                                     kernel: kh, input: input.height)
            code.loop(from: 0, to: rows.lowerBound) { oy in row(oy, clipped: true) }
            code.loop(from: rows.lowerBound, to: rows.upperBound) { oy in row(oy, clipped: false) }
            code.loop(from: rows.upperBound, to: output.height) { oy in row(oy, clipped: true) }
        }
    }

    /// Emits, into the current function, one output row of a depthwise convolution on NHWC rows
    /// with `hwc` weights, one output pixel at a time, vectorized over channels in chunks of four
    /// vectors. `inputRow(ky)` returns the input row that tap row `ky` reads. `rowTaps` is the
    /// run-time range of tap rows inside the input, or nil when all `kernelHeight` rows are:
    /// then pixels whose window lies inside the input horizontally use constant, unrolled taps.
    /// `residual` and `y` point at the output row.
    func emitDepthwiseRow(_ conv: Conv2D, inputWidth: Int, outputWidth: Int, inputRow: (LLVMValue) -> LLVMValue,
                          rowTaps: (LLVMValue, LLVMValue)?, w: LLVMValue, bias: LLVMValue?, residual: LLVMValue?,
                          y: LLVMValue) {
        let channels = conv.inChannels, kh = conv.kernelHeight, kw = conv.kernelWidth
        // With every tap row inside the input, the row pointers are computed once per output row.
        let constantRows = rowTaps == nil ? (0..<kh).map { inputRow(code.index($0)) } : []

        /// Computes one output pixel, with all taps as constants or with column taps clipped at run time.
        func pixel(_ ox: LLVMValue, constantTaps: Bool) {
            let ix0 = code.add(code.mul(ox, conv.strideWidth), -conv.padding.left)
            let columnTaps = constantTaps ? nil
                : (code.maximum(code.negate(ix0), code.index(0)),
                   code.minimum(code.sub(code.index(inputWidth), ix0), code.index(kw)))
            let xOffset = code.mul(ix0, channels)
            let yOffset = code.mul(ox, channels)
            channelChunks(channels, vectorsPerChunk: 4) { start, widths in
                let offsets = blockOffsets(widths)
                func accumulate(_ accumulators: [LLVMValue], row: LLVMValue, ky: LLVMValue, kx: LLVMValue) -> [LLVMValue] {
                    let xTap = code.add(code.add(xOffset, code.mul(kx, channels)), start)
                    let wTap = code.add(code.mul(code.add(code.mul(ky, kw), kx), channels), start)
                    return zip(zip(widths, offsets), accumulators).map { block, accumulator in
                        let (width, offset) = block
                        return code.fmuladd(code.load(row, code.add(xTap, offset), width: width),
                                            code.load(w, code.add(wTap, offset), width: width), accumulator)
                    }
                }
                var accumulators = initialAccumulators(bias: bias, start: start, widths: widths)
                if let columnTaps {
                    func columnLoop(_ rowAccumulators: [LLVMValue], row: LLVMValue, ky: LLVMValue) -> [LLVMValue] {
                        code.loop(from: columnTaps.0, to: columnTaps.1, carrying: rowAccumulators) { kx, tapAccumulators in
                            accumulate(tapAccumulators, row: row, ky: ky, kx: kx)
                        }
                    }
                    if let rowTaps {
                        accumulators = code.loop(from: rowTaps.0, to: rowTaps.1, carrying: accumulators) { ky, rowAccumulators in
                            columnLoop(rowAccumulators, row: inputRow(ky), ky: ky)
                        }
                    } else {
                        for ky in 0..<kh {
                            accumulators = columnLoop(accumulators, row: constantRows[ky], ky: code.index(ky))
                        }
                    }
                } else {
                    for ky in 0..<kh {
                        for kx in 0..<kw {
                            accumulators = accumulate(accumulators, row: constantRows[ky], ky: code.index(ky), kx: code.index(kx))
                        }
                    }
                }
                let base = code.add(yOffset, start)
                for (accumulator, offset) in zip(accumulators, offsets) {
                    storeEpilogue(accumulator, activation: conv.activation, residual: residual, y: y,
                                  index: code.add(base, offset))
                }
            }
        }

        if rowTaps != nil {
            code.loop(from: 0, to: outputWidth) { ox in pixel(ox, constantTaps: false) }
            return
        }
        let columns = interiorRange(output: outputWidth, stride: conv.strideWidth, padding: conv.padding.left,
                                    kernel: kw, input: inputWidth)
        code.loop(from: 0, to: columns.lowerBound) { ox in pixel(ox, constantTaps: false) }
        code.loop(from: columns.lowerBound, to: columns.upperBound) { ox in pixel(ox, constantTaps: true) }
        code.loop(from: columns.upperBound, to: outputWidth) { ox in pixel(ox, constantTaps: false) }
    }

    /// Defines the kernel of a convolution with groups 1 and `hwio`, `io` or `io_panels` weights on
    /// either input layout (see `emitConvolutionRows`). Arguments: x, w, [bias], [residual], y.
    func convolutionByPixels(_ conv: Conv2D, weightLayout: WeightLayout, input: CTensor, output: CTensor, hasResidual: Bool,
                             alignments: [Int]) -> LLVMValue {
        let kh = conv.kernelHeight, kw = conv.kernelWidth
        let arguments = convolutionArguments(conv, input: input, output: output,
                                             weightCount: kh * kw * conv.inChannels * conv.outChannels,
                                             hasResidual: hasResidual, alignments: alignments)
        let name = "conv\(kh)x\(kw)_\(llvmStrideLabel(conv))_f32_\(input.label)_to_\(conv.outChannels)_\(llvmPaddingLabel(conv.padding))"
            + llvmActivationSuffix(conv.activation) + (hasResidual ? "_residual" : "") + (conv.hasBias ? "" : "_nobias")
        return kernel(name, variant: weightLayout.rawValue, arguments) {
            emitConvolutionRows(conv, weightLayout: weightLayout, input: input, outputWidth: output.width,
                                rows: (code.index(0), output.height), x: code.parameter(0), w: code.parameter(1),
                                bias: conv.hasBias ? code.parameter(2) : nil,
                                residual: hasResidual ? code.parameter(conv.hasBias ? 3 : 2) : nil,
                                y: code.parameter(arguments.count - 1))
        }
    }

    /// Emits, into the current function, output rows `rows.start ..< rows.start + rows.count` of a
    /// convolution with groups 1: output pixels in blocks of 4 where the whole window lies inside
    /// the input horizontally, one at a time at the borders, vectorized over output channels.
    /// Input rows outside `input` are zero padding. `x` is the whole input; `residual` and `y`
    /// point at output row `rows.start`, NHWC.
    func emitConvolutionRows(_ conv: Conv2D, weightLayout: WeightLayout, input: CTensor, outputWidth: Int,
                             rows: (start: LLVMValue, count: Int), x: LLVMValue, w: LLVMValue, bias: LLVMValue?,
                             residual: LLVMValue?, y: LLVMValue) {
        let kh = conv.kernelHeight, kw = conv.kernelWidth, sw = conv.strideWidth
        let outChannels = conv.outChannels, inChannels = conv.inChannels
        let (rowStride, columnStride, channelStride) = input.isChannelsLast
            ? (input.width * input.channels, input.channels, 1)
            : (input.width, 1, input.pixels)
        let columns = interiorRange(output: outputWidth, stride: sw, padding: conv.padding.left, kernel: kw, input: input.width)
        let block = 4
        let blocks = columns.count / block
        let blockEnd = columns.lowerBound + blocks * block

        func pixels(_ count: Int, oy: LLVMValue, row: LLVMValue, ox: LLVMValue, rowTaps: (LLVMValue, LLVMValue), clipColumns: Bool) {
            let iy0 = code.add(code.mul(oy, conv.strideHeight), -conv.padding.top)
            let ix0 = code.add(code.mul(ox, sw), -conv.padding.left)
            let xOffset = code.add(code.mul(iy0, rowStride), code.mul(ix0, columnStride))
            let yOffset = code.mul(code.add(code.mul(row, outputWidth), ox), outChannels)
            let (kx0, kx1) = clipColumns
                ? (code.maximum(code.negate(ix0), code.index(0)), code.minimum(code.sub(code.index(input.width), ix0), code.index(kw)))
                : (code.index(0), code.index(kw))
            func outputBlock(_ o: LLVMValue, width: Int) {
                let start = bias.map { code.load($0, o, width: width) } ?? code.float(0, width: width)
                let initial = Array(repeating: start, count: count)
                let (columnBase, weightStride) = weightColumn(o, layout: weightLayout, inputChannels: inChannels,
                                                              outputChannels: outChannels)
                let sums = code.loop(from: rowTaps.0, to: rowTaps.1, carrying: initial) { ky, rowSums in
                    code.loop(from: kx0, to: kx1, carrying: rowSums) { kx, tapSums in
                        let tap = code.add(xOffset, code.add(code.mul(ky, rowStride), code.mul(kx, columnStride)))
                        let weightRow = code.add(code.mul(code.add(code.mul(ky, kw), kx), inChannels * outChannels), columnBase)
                        return code.loop(from: 0, to: inChannels, carrying: tapSums) { i, channelSums in
                            let weights = code.load(w, code.add(weightRow, code.mul(i, weightStride)), width: width)
                            let channel = code.add(tap, code.mul(i, channelStride))
                            return channelSums.enumerated().map { p, sum in
                                let value = code.load(x, code.add(channel, p * sw * columnStride))
                                return code.fmuladd(code.splat(value, width: width), weights, sum)
                            }
                        }
                    }
                }
                for (p, sum) in sums.enumerated() {
                    storeEpilogue(sum, activation: conv.activation, residual: residual, y: y,
                                  index: code.add(code.add(yOffset, p * outChannels), o))
                }
            }
            let whole = outChannels - outChannels % target.floatLanes
            if whole > 0 {
                code.loop(from: 0, to: whole, step: target.floatLanes) { o in outputBlock(o, width: target.floatLanes) }
            }
            if whole < outChannels {
                outputBlock(code.index(whole), width: outChannels - whole)
            }
        }

        code.loop(from: 0, to: rows.count) { row in
            let oy = code.add(rows.start, row)
            let iy0 = code.add(code.mul(oy, conv.strideHeight), -conv.padding.top)
            let ky0 = code.maximum(code.negate(iy0), code.index(0))
            let ky1 = code.minimum(code.sub(code.index(input.height), iy0), code.index(kh))
            let singles = blocks > 0 ? [0..<columns.lowerBound, blockEnd..<outputWidth] : [0..<outputWidth]
            code.loop(from: singles[0].lowerBound, to: singles[0].upperBound) { ox in
                pixels(1, oy: oy, row: row, ox: ox, rowTaps: (ky0, ky1), clipColumns: true)
            }
            if blocks > 0 {
                code.loop(from: columns.lowerBound, to: blockEnd, step: block) { ox in
                    pixels(block, oy: oy, row: row, ox: ox, rowTaps: (ky0, ky1), clipColumns: false)
                }
                code.loop(from: singles[1].lowerBound, to: singles[1].upperBound) { ox in
                    pixels(1, oy: oy, row: row, ox: ox, rowTaps: (ky0, ky1), clipColumns: true)
                }
            }
        }
    }

    /// Defines the kernel of any convolution by direct scalar loops: for each output pixel, the output row
    /// accumulates every tap and input channel, in either weight layout and input layout.
    /// Arguments: x, w, [bias], [residual], y.
    func directConvolution(_ conv: Conv2D, weightLayout: WeightLayout, input: CTensor, output: CTensor,
                           residual residualTensor: CTensor?, alignments: [Int]) -> LLVMValue {
        let kh = conv.kernelHeight, kw = conv.kernelWidth
        let groupInputs = conv.inChannels / conv.groups, groupOutputs = conv.outChannels / conv.groups
        let outChannels = conv.outChannels
        let arguments = convolutionArguments(conv, input: input, output: output,
                                             weightCount: conv.weightShape.reduce(1, *),
                                             hasResidual: residualTensor != nil, alignments: alignments)
        let groupLabel = conv.groups > 1 ? "_g\(conv.groups)" : ""
        let name = "conv\(kh)x\(kw)_\(llvmStrideLabel(conv))_f32_direct_\(input.label)_to_\(outChannels)\(groupLabel)"
            + "_\(weightLayout.rawValue)_\(llvmPaddingLabel(conv.padding))" + llvmActivationSuffix(conv.activation)
            + (residualTensor != nil ? "_residual" : "") + (conv.hasBias ? "" : "_nobias")
        return kernel(name, variant: residualTensor?.label ?? "", arguments) {
            let x = code.parameter(0), w = code.parameter(1)
            let bias = conv.hasBias ? code.parameter(2) : nil
            let residual = residualTensor != nil ? code.parameter(conv.hasBias ? 3 : 2) : nil
            let y = code.parameter(arguments.count - 1)
            let lastRow = (output.height - 1) * conv.strideHeight - conv.padding.top + kh - 1
            let lastColumn = (output.width - 1) * conv.strideWidth - conv.padding.left + kw - 1

            code.loop(from: 0, to: output.height) { oy in
                code.loop(from: 0, to: output.width) { ox in
                    let pixel = code.add(code.mul(oy, output.width), ox)
                    let yRow = code.mul(pixel, outChannels)
                    code.loop(from: 0, to: outChannels) { o in
                        code.store(bias.map { code.load($0, o) } ?? code.float(0), y, code.add(yRow, o))
                    }
                    code.loop(from: 0, to: kh) { ky in
                        let iy = code.add(code.add(code.mul(oy, conv.strideHeight), -conv.padding.top), ky)
                        // A bounds check only on a side where the window can leave the input.
                        var rowChecks: [LLVMValue] = []
                        if conv.padding.top > 0 { rowChecks.append(code.compare(LLVMIntSGE, iy, code.index(0))) }
                        if lastRow >= input.height { rowChecks.append(code.compare(LLVMIntSLT, iy, code.index(input.height))) }
                        guarded(rowChecks) {
                            code.loop(from: 0, to: kw) { kx in
                                let ix = code.add(code.add(code.mul(ox, conv.strideWidth), -conv.padding.left), kx)
                                var columnChecks: [LLVMValue] = []
                                if conv.padding.left > 0 { columnChecks.append(code.compare(LLVMIntSGE, ix, code.index(0))) }
                                if lastColumn >= input.width { columnChecks.append(code.compare(LLVMIntSLT, ix, code.index(input.width))) }
                                guarded(columnChecks) {
                                    code.loop(from: 0, to: conv.groups) { g in
                                        code.loop(from: 0, to: groupInputs) { i in
                                            let channel = code.add(code.mul(g, groupInputs), i)
                                            let inputPixel = code.add(code.mul(iy, input.width), ix)
                                            let value = code.load(x, tensorIndex(input, pixel: inputPixel, channel: channel))
                                            code.loop(from: 0, to: groupOutputs) { o in
                                                let outputChannel = code.add(code.mul(g, groupOutputs), o)
                                                let weightIndex: LLVMValue
                                                switch weightLayout {
                                                case .pytorch:
                                                    // [out][in / groups][kh][kw]
                                                    let row = code.add(code.mul(outputChannel, groupInputs), i)
                                                    weightIndex = code.add(code.mul(code.add(code.mul(row, kh), ky), kw), kx)
                                                case .inputOutputPanels:
                                                    // A 1×1 convolution with groups 1.
                                                    let (base, stride) = weightColumn(outputChannel, layout: weightLayout,
                                                                                      inputChannels: groupInputs, outputChannels: outChannels)
                                                    weightIndex = code.add(base, code.mul(i, stride))
                                                case .hwio, .inputOutput, .depthwiseHWC:
                                                    // [kh][kw][in / groups][out]; `io` is the 1×1 case and
                                                    // `hwc` the one-input-per-group case.
                                                    let tap = code.add(code.mul(ky, kw), kx)
                                                    weightIndex = code.add(code.mul(code.add(code.mul(tap, groupInputs), i), outChannels), outputChannel)
                                                }
                                                let target = code.add(yRow, outputChannel)
                                                code.store(code.fmuladd(value, code.load(w, weightIndex), code.load(y, target)), y, target)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    code.loop(from: 0, to: outChannels) { o in
                        let target = code.add(yRow, o)
                        var value = code.activate(code.load(y, target), conv.activation)
                        if let residual, let residualTensor {
                            value = code.fadd(value, code.load(residual, tensorIndex(residualTensor, pixel: pixel, channel: o)))
                        }
                        code.store(value, y, target)
                    }
                }
            }
        }
    }

    private func guarded(_ checks: [LLVMValue], _ body: () -> Void) {
        guard let first = checks.first else {
            body()
            return
        }
        code.ifThen(checks.dropFirst().reduce(first) { code.and($0, $1) }, body)
    }

    private func convolutionArguments(_ conv: Conv2D, input: CTensor, output: CTensor, weightCount: Int,
                                      hasResidual: Bool, alignments: [Int]) -> [Argument] {
        var arguments = [Argument(name: "x", bytes: input.count * 4, alignment: 0),
                         Argument(name: "w", bytes: weightCount * 4, alignment: 0)]
        if conv.hasBias { arguments.append(Argument(name: "bias", bytes: conv.outChannels * 4, alignment: 0)) }
        if hasResidual { arguments.append(Argument(name: "residual", bytes: output.count * 4, alignment: 0)) }
        arguments.append(Argument(name: "y", bytes: output.count * 4, alignment: 0, isOutput: true))
        for index in arguments.indices { arguments[index].alignment = alignments[index] }
        return arguments
    }

    /// Tap bounds clipped to the input: `ky` in `ky0..<ky1` and `kx` in `kx0..<kx1`.
    private func clippedTaps(iy0: LLVMValue, ix0: LLVMValue, conv: Conv2D, input: CTensor)
        -> (ky0: LLVMValue, ky1: LLVMValue, kx0: LLVMValue, kx1: LLVMValue) {
        let zero = code.index(0)
        return (code.maximum(code.negate(iy0), zero),
                code.minimum(code.sub(code.index(input.height), iy0), code.index(conv.kernelHeight)),
                code.maximum(code.negate(ix0), zero),
                code.minimum(code.sub(code.index(input.width), ix0), code.index(conv.kernelWidth)))
    }

    // MARK: - Other ops

    /// Defines the kernel of inference BatchNorm: `scale[c] = weight[c] / sqrt(running_var[c] + epsilon)` in double
    /// into the scratch area, then `y = (x - running_mean) * scale + bias`.
    /// Arguments: x, weight, bias, running_mean, running_var, scratch, y.
    func batchNorm(epsilon: Float, input: CTensor, output: CTensor, alignments: [Int]) -> LLVMValue {
        let channels = input.channels
        let names = ["x", "gamma", "beta", "mean", "variance", "scale", "y"]
        let bytes = [input.count * 4] + Array(repeating: channels * 4, count: 5) + [output.count * 4]
        let arguments = (0..<7).map { Argument(name: names[$0], bytes: bytes[$0], alignment: alignments[$0], isOutput: $0 >= 5) }
        return kernel("batchnorm_f32_\(input.label)", variant: "epsilon \(epsilon.bitPattern)", arguments) {
            let x = code.parameter(0), gamma = code.parameter(1), beta = code.parameter(2)
            let mean = code.parameter(3), variance = code.parameter(4), scale = code.parameter(5), y = code.parameter(6)
            let builder = code.builder
            code.loop(from: 0, to: channels) { c in
                let g = LLVMBuildFPExt(builder, code.load(gamma, c), code.doubleType, "")!
                let v = LLVMBuildFPExt(builder, code.load(variance, c), code.doubleType, "")!
                let e = LLVMConstReal(code.doubleType, Double(epsilon))!
                let root = code.callIntrinsic("llvm.sqrt", type: code.doubleType, [LLVMBuildFAdd(builder, v, e, "")])
                code.store(LLVMBuildFPTrunc(builder, LLVMBuildFDiv(builder, g, root, ""), code.floatType, ""), scale, c)
            }
            code.loop(from: 0, to: input.pixels) { p in
                code.loop(from: 0, to: channels) { c in
                    let value = code.fsub(code.load(x, tensorIndex(input, pixel: p, channel: c)), code.load(mean, c))
                    code.store(code.fmuladd(value, code.load(scale, c), code.load(beta, c)), y, tensorIndex(output, pixel: p, channel: c))
                }
            }
        }
    }

    /// Defines the kernel of an element-wise activation. Arguments: x, y.
    func activation(_ activation: Activation, input: CTensor, output: CTensor, alignments: [Int]) -> LLVMValue {
        let arguments = [Argument(name: "x", bytes: input.count * 4, alignment: alignments[0]),
                         Argument(name: "y", bytes: output.count * 4, alignment: alignments[1], isOutput: true)]
        return kernel("\(activation.rawValue)_f32_\(input.label)", arguments) {
            elementwise(inputs: [input], output: output) { values in code.activate(values[0], activation) }
        }
    }

    /// Defines the kernel of the element-wise sum of two values. Arguments: a, b, y.
    func add(_ lhs: CTensor, _ rhs: CTensor, output: CTensor, alignments: [Int]) -> LLVMValue {
        let arguments = [Argument(name: "a", bytes: lhs.count * 4, alignment: alignments[0]),
                         Argument(name: "b", bytes: rhs.count * 4, alignment: alignments[1]),
                         Argument(name: "y", bytes: output.count * 4, alignment: alignments[2], isOutput: true)]
        let name = "add_f32_\(lhs.label)" + (lhs.label == rhs.label ? "" : "_\(rhs.label)")
        return kernel(name, arguments) {
            elementwise(inputs: [lhs, rhs], output: output) { values in code.fadd(values[0], values[1]) }
        }
    }

    /// Defines the kernel of `y = x * scale[c]`, one scale per channel. Arguments: x, scale, y.
    func channelScale(input: CTensor, output: CTensor, alignments: [Int]) -> LLVMValue {
        let arguments = [Argument(name: "x", bytes: input.count * 4, alignment: alignments[0]),
                         Argument(name: "scale", bytes: input.channels * 4, alignment: alignments[1]),
                         Argument(name: "y", bytes: output.count * 4, alignment: alignments[2], isOutput: true)]
        return kernel("channel_scale_f32_\(input.label)", arguments) {
            let x = code.parameter(0), scale = code.parameter(1), y = code.parameter(2)
            code.loop(from: 0, to: input.pixels) { p in
                code.loop(from: 0, to: input.channels) { c in
                    let value = code.fmul(code.load(x, tensorIndex(input, pixel: p, channel: c)), code.load(scale, c))
                    code.store(value, y, tensorIndex(output, pixel: p, channel: c))
                }
            }
        }
    }

    /// Defines the kernel of the mean over H and W, per channel. Arguments: x, y (C floats).
    func globalAveragePool(input: CTensor, alignments: [Int]) -> LLVMValue {
        let arguments = [Argument(name: "x", bytes: input.count * 4, alignment: alignments[0]),
                         Argument(name: "y", bytes: input.channels * 4, alignment: alignments[1], isOutput: true)]
        return kernel("global_avgpool_f32_\(input.label)", arguments) {
            averagePool(input: input, x: code.parameter(0), into: code.parameter(1))
        }
    }

    /// Defines the kernel of a fully connected layer with PyTorch-order `[out][in]` weights. Arguments: x, w, [bias], y.
    func linear(_ linear: Linear, alignments: [Int]) -> LLVMValue {
        var arguments = [Argument(name: "x", bytes: linear.inFeatures * 4, alignment: 0),
                         Argument(name: "w", bytes: linear.inFeatures * linear.outFeatures * 4, alignment: 0)]
        if linear.hasBias { arguments.append(Argument(name: "bias", bytes: linear.outFeatures * 4, alignment: 0)) }
        arguments.append(Argument(name: "y", bytes: linear.outFeatures * 4, alignment: 0, isOutput: true))
        for index in arguments.indices { arguments[index].alignment = alignments[index] }
        let name = "linear_f32_\(linear.inFeatures)_to_\(linear.outFeatures)" + llvmActivationSuffix(linear.activation)
            + (linear.hasBias ? "" : "_nobias")
        return kernel(name, arguments) {
            matrixVector(x: code.parameter(0), w: code.parameter(1), bias: linear.hasBias ? code.parameter(2) : nil,
                         y: code.parameter(arguments.count - 1), outputs: linear.outFeatures, inputs: linear.inFeatures,
                         activation: linear.activation)
        }
    }

    /// Defines the kernel of a fused squeeze-excitation block: channel means, fc1 and its activation, fc2 and the
    /// gate, then `y = x * gate[c]`. Arguments: x, fc1 weight, fc1 bias, fc2 weight, fc2 bias,
    /// scratch, y.
    func squeezeExcite(_ se: SqueezeExcite, input: CTensor, output: CTensor, alignments: [Int]) -> LLVMValue {
        let scratch = CKernelLibrary.squeezeExciteScratchFloats(se)
        let names = ["x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "scratch", "y"]
        let bytes = [input.count * 4, se.squeezeChannels * se.channels * 4, se.squeezeChannels * 4,
                     se.channels * se.squeezeChannels * 4, se.channels * 4, scratch.total * 4, output.count * 4]
        let arguments = (0..<7).map { Argument(name: names[$0], bytes: bytes[$0], alignment: alignments[$0], isOutput: $0 >= 5) }
        let name = "squeeze_excite_f32_\(input.label)_s\(se.squeezeChannels)_\(se.activation.rawValue)_\(se.gate.rawValue)"
        return kernel(name, arguments) {
            let x = code.parameter(0), area = code.parameter(5), y = code.parameter(6)
            let pooled = area, hidden = code.element(area, scratch.hidden), gate = code.element(area, scratch.gate)
            averagePool(input: input, x: x, into: pooled)
            matrixVector(x: pooled, w: code.parameter(1), bias: code.parameter(2), y: hidden,
                         outputs: se.squeezeChannels, inputs: se.channels, activation: se.activation)
            matrixVector(x: hidden, w: code.parameter(3), bias: code.parameter(4), y: gate,
                         outputs: se.channels, inputs: se.squeezeChannels, activation: se.gate)
            code.loop(from: 0, to: input.pixels) { p in
                code.loop(from: 0, to: input.channels) { c in
                    let value = code.fmul(code.load(x, tensorIndex(input, pixel: p, channel: c)), code.load(gate, c))
                    code.store(value, y, tensorIndex(output, pixel: p, channel: c))
                }
            }
        }
    }

    private func averagePool(input: CTensor, x: LLVMValue, into target: LLVMValue) {
        code.loop(from: 0, to: input.channels) { c in code.store(code.float(0), target, c) }
        code.loop(from: 0, to: input.pixels) { p in
            code.loop(from: 0, to: input.channels) { c in
                code.store(code.fadd(code.load(target, c), code.load(x, tensorIndex(input, pixel: p, channel: c))), target, c)
            }
        }
        code.loop(from: 0, to: input.channels) { c in
            code.store(code.fdiv(code.load(target, c), code.float(Float(input.pixels))), target, c)
        }
    }

    /// Computes `y[o] = activation(bias[o] + sum over i of w[o][i] * x[i])` with sixteen
    /// partial sums per output, as the C helper keeps them. The inner loop is then a 16-lane
    /// vector FMA that does not reassociate float additions.
    func matrixVector(x: LLVMValue, w: LLVMValue, bias: LLVMValue?, y: LLVMValue, outputs: Int, inputs: Int,
                              activation: Activation) {
        let blocked = inputs - inputs % 16
        code.loop(from: 0, to: outputs) { o in
            let row = code.mul(o, inputs)
            let lanes = code.loop(from: 0, to: blocked, step: 16, carrying: [code.float(0, width: 16)]) { i, partial in
                [code.fmuladd(code.load(w, code.add(row, i), width: 16), code.load(x, i, width: 16), partial[0])]
            }[0]
            var sum = bias.map { code.load($0, o) } ?? code.float(0)
            if blocked > 0 {
                for lane in 0..<16 { sum = code.fadd(sum, code.extract(lanes, lane: lane)) }
            }
            sum = code.loop(from: blocked, to: inputs, carrying: [sum]) { i, partial in
                [code.fmuladd(code.load(w, code.add(row, i)), code.load(x, i), partial[0])]
            }[0]
            code.store(code.activate(sum, activation), y, o)
        }
    }

    /// Computes `y[i] = expression(inputs[i])`: one flat loop when every operand is channels-last,
    /// else pixel and channel loops with each operand's own index.
    private func elementwise(inputs: [CTensor], output: CTensor, expression: ([LLVMValue]) -> LLVMValue) {
        let y = code.parameter(inputs.count)
        if inputs.allSatisfy(\.isChannelsLast) {
            code.loop(from: 0, to: output.count) { i in
                code.store(expression(inputs.indices.map { code.load(code.parameter($0), i) }), y, i)
            }
            return
        }
        code.loop(from: 0, to: output.pixels) { p in
            code.loop(from: 0, to: output.channels) { c in
                let values = inputs.enumerated().map { position, tensor in
                    code.load(code.parameter(position), tensorIndex(tensor, pixel: p, channel: c))
                }
                code.store(expression(values), y, tensorIndex(output, pixel: p, channel: c))
            }
        }
    }

    // MARK: - Segments

    /// A run of equal tiles along one dimension: a loop over whole tiles, or one tile at a
    /// constant start.
    struct TileSegment {
        var start: Int
        var end: Int
        /// Indices per tile.
        var count: Int
        var isLoop: Bool
    }

    /// Splits `0..<extent` into a loop over whole tiles of `step` and a partial tile at the end.
    func tileSegments(extent: Int, step: Int) -> [TileSegment] {
        let whole = extent - extent % step
        var segments: [TileSegment] = []
        if whole > step {
            segments.append(TileSegment(start: 0, end: whole, count: step, isLoop: true))
        } else if whole == step {
            segments.append(TileSegment(start: 0, end: whole, count: step, isLoop: false))
        }
        if whole < extent {
            segments.append(TileSegment(start: whole, end: extent, count: extent - whole, isLoop: false))
        }
        return segments
    }

    func forSegment(_ segment: TileSegment, _ body: (LLVMValue) -> Void) {
        if segment.isLoop {
            code.loop(from: segment.start, to: segment.end, step: segment.count, body)
        } else {
            body(code.index(segment.start))
        }
    }
}

/// Returns the output positions `o` whose window `o * stride - padding ..< + kernel` lies inside
/// `0..<input`; empty when there are none.
func interiorRange(output: Int, stride: Int, padding: Int, kernel: Int, input: Int) -> Range<Int> {
    let first = min((padding + stride - 1) / stride, output)
    let reach = input + padding - kernel
    let end = reach < 0 ? 0 : min(reach / stride + 1, output)
    return first < end ? first..<end : first..<first
}

func llvmActivationSuffix(_ activation: Activation) -> String {
    activation == .identity ? "" : "_\(activation.rawValue)"
}

func llvmPaddingLabel(_ padding: Padding) -> String {
    if padding.top == padding.bottom && padding.left == padding.right && padding.top == padding.left {
        return "p\(padding.top)"
    }
    return "p\(padding.top)_\(padding.left)_\(padding.bottom)_\(padding.right)"
}

func llvmStrideLabel(_ conv: Conv2D) -> String {
    conv.strideHeight == conv.strideWidth ? "s\(conv.strideHeight)" : "s\(conv.strideHeight)x\(conv.strideWidth)"
}
