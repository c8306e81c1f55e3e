/// Depthwise convolution kernels on NHWC data with `hwc` weights, built from one output row at a
/// time so that a fused block can feed them rows from a ring buffer as well as from a tensor.
///
/// A row is addressed through an array `rows[ky]` of pointers to the input rows that its taps
/// read (pixel 0 of each row), valid for `ky` in `[ky0, ky1)`, the taps inside the input. Output
/// pixels go through a block helper in groups of up to `depthwiseBlockPixels`: the block's input
/// columns are loaded once and feed every pixel and tap that reads them, and the accumulators stay
/// in registers. Blocks at the left and right edges skip the columns in the padding.

/// The intrinsics of one vector instruction set, for kernels written once for AVX-512 and AVX2.
struct CVectorISA {
    var condition: String
    var lanes: Int
    var registers: Int
    var vector: String
    var activate: String
    var zero: String
    /// The mask type and the expression that enables lanes `0 ..< left`, for `0 < left < lanes`.
    var maskType: String
    var mask: (String) -> String
    var loadFull: (String) -> String
    var loadMasked: (String) -> String
    var storeFull: (String, String) -> String
    var storeMasked: (String, String) -> String
    var fma: (String, String, String) -> String
    var add: (String, String) -> String

    func load(_ address: String, masked: Bool) -> String { masked ? loadMasked(address) : loadFull(address) }
    func store(_ address: String, _ value: String, masked: Bool) -> String {
        masked ? storeMasked(address, value) : storeFull(address, value)
    }

    static let avx512 = CVectorISA(
        condition: "defined(KERNELS_AVX512)", lanes: 16, registers: 32, vector: "__m512", activate: "activate_f32x16",
        zero: "_mm512_setzero_ps()", maskType: "__mmask16", mask: { "(__mmask16)((1u << (\($0))) - 1u)" },
        loadFull: { "_mm512_loadu_ps(\($0))" }, loadMasked: { "_mm512_maskz_loadu_ps(mask, \($0))" },
        storeFull: { "_mm512_storeu_ps(\($0), \($1))" }, storeMasked: { "_mm512_mask_storeu_ps(\($0), mask, \($1))" },
        fma: { "_mm512_fmadd_ps(\($0), \($1), \($2))" }, add: { "_mm512_add_ps(\($0), \($1))" })

    static let avx2 = CVectorISA(
        condition: "defined(KERNELS_AVX2)", lanes: 8, registers: 16, vector: "__m256", activate: "activate_f32x8",
        zero: "_mm256_setzero_ps()", maskType: "__m256i", mask: { "lane_mask_f32x8(\($0))" },
        loadFull: { "_mm256_loadu_ps(\($0))" }, loadMasked: { "_mm256_maskload_ps(\($0), mask)" },
        storeFull: { "_mm256_storeu_ps(\($0), \($1))" }, storeMasked: { "_mm256_maskstore_ps(\($0), mask, \($1))" },
        fma: { "_mm256_fmadd_ps(\($0), \($1), \($2))" }, add: { "_mm256_add_ps(\($0), \($1))" })

    static let all = [avx512, avx2]
}

/// Output pixels per call of a depthwise block helper.
let depthwiseBlockPixels = 8

/// The largest kernel side with a block helper; larger kernels clip every pixel's taps.
let depthwiseBlockMaximumKernel = 5

extension CKernelLibrary {
    /// Defines (once) and returns the block helper of `kh`×`kw` stride-`stride` depthwise
    /// convolutions: up to `depthwiseBlockPixels` adjacent output pixels whose taps all lie
    /// inside the input columns, all channels, taps `ky` in `[ky0, ky1)`.
    mutating func depthwiseBlockHelper(kernelHeight kh: Int, kernelWidth kw: Int, stride: Int) -> String {
        use(.depthwisePixel)
        let name = "depthwise\(kh)x\(kw)_s\(stride)_f32_block"

        var text = CWriter()
        text.line("/*")
        text.line(" * Up to \(depthwiseBlockPixels) adjacent output pixels of a \(kh)x\(kw), stride \(stride) depthwise convolution, all channels:")
        text.line(" *   y[p][c] = activation(bias[c] + sum over taps of rows[ky][column + p * \(stride) + kx][c] * w[ky][kx][c]) + residual[p][c]")
        text.line(" * for p < pixels, over the rows ky in [ky0, ky1). Unless `checked`, every column read lies inside the")
        text.line(" * input row; when `checked`, columns outside [0, in_width) count as zero padding (fast when `column`")
        text.line(" * is a literal). x, y and residual pixels are `channels` floats apart (NHWC). Each input column is")
        text.line(" * loaded once per row and feeds every pixel and tap that reads it.")
        text.line(" */")
        let signature = [
            "KERNEL_INLINE void \(name)(const float *const *rows, const float *restrict w,",
            "    const float *restrict bias, const float *restrict residual, float *restrict y,",
            "    int channels, int in_width, int column, int pixels, int checked, int ky0, int ky1,",
            "    int has_bias, int has_residual, int activation)",
        ]

        for (position, isa) in CVectorISA.all.enumerated() {
            text.directive(position == 0 ? "#if \(isa.condition)" : "#elif \(isa.condition)")
            text.lines(signature)
            text.open("")
            // Registers: the accumulators, one row's weights, the loaded column and the bias.
            let group = max(1, min(depthwiseBlockPixels, isa.registers - kw - 2))
            text.line("int c = 0;")
            text.open("for (; c + \(isa.lanes) <= channels; c += \(isa.lanes))")
            emitDepthwiseBlockChannels(&text, isa: isa, masked: false, kernelHeight: kh, kernelWidth: kw, stride: stride, group: group)
            text.close()
            text.open("if (c < channels)")
            text.line("const \(isa.maskType) mask = \(isa.mask("channels - c"));")
            emitDepthwiseBlockChannels(&text, isa: isa, masked: true, kernelHeight: kh, kernelWidth: kw, stride: stride, group: group)
            text.close()
            text.close()
        }

        // Vector extensions and plain C: one pixel at a time, with the taps in the padding clipped.
        text.directive("#else")
        text.lines(signature)
        text.open("")
        text.openFor("p", to: "pixels")
        text.line("const int first = column + p * \(stride);")
        text.line("const int kx0 = checked && first < 0 ? -first : 0;")
        text.line("const int kx1 = checked && first + \(kw) > in_width ? in_width - first : \(kw);")
        text.line("depthwise_f32_pixel(rows, w, bias, has_residual ? residual + p * channels : residual, y + p * channels, channels, \(kw),")
        text.line("                    first, ky0, ky1, kx0, kx1, has_bias, has_residual, activation);")
        text.close()
        text.close()
        text.directive("#endif")
        defineHelper(name: name, text: text.text)
        return name
    }

    /// Defines the kernel of a depthwise convolution on NHWC input with `hwc` weights, one
    /// output row at a time. Arguments: x, w, [bias], [residual], y.
    mutating func depthwiseConvolution(_ conv: Conv2D, input: CTensor, output: CTensor, hasResidual: Bool) -> String {
        let channels = input.channels, kh = conv.kernelHeight
        let rowFloats = input.width * channels
        var body = CWriter()
        body.openFor("oy", to: output.height)
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

        let name = "depthwise\(kh)x\(conv.kernelWidth)_\(strideLabel(conv))_f32_\(input.label)_\(paddingLabel(conv.padding))"
            + activationSuffix(conv.activation) + (hasResidual ? "_residual" : "") + (conv.hasBias ? "" : "_nobias")
        var parameters = [inputParameter, constParameter("w")]
        if conv.hasBias { parameters.append(constParameter("bias")) }
        if hasResidual { parameters.append(constParameter("residual")) }
        parameters.append(outputParameter)
        let summary = "\(kh)x\(conv.kernelWidth) depthwise convolution, stride \(conv.strideHeight)x\(conv.strideWidth), padding \(conv.padding):"
            + " \(input.label) -> \(output.label), w[\(kh)][\(conv.kernelWidth)][\(channels)]"
            + epilogueDescription(hasBias: conv.hasBias, activation: conv.activation, hasResidual: hasResidual)
        return define(name: name, summary: summary, parameters: parameters, body: body)
    }

    /// Writes the code of one output row of a depthwise convolution: blocks of
    /// `depthwiseBlockPixels` output pixels from column 0. A block whose window crosses the left
    /// or right edge checks its columns at a literal position, and the blocks between run in a
    /// loop without checks. Kernels larger than `depthwiseBlockMaximumKernel` clip every pixel's
    /// taps instead.
    mutating func emitDepthwiseRow(_ body: inout CWriter, _ row: DepthwiseRow, ky0: String, ky1: String) {
        let conv = row.conv, kw = conv.kernelWidth, stride = conv.strideWidth, channels = row.channels
        let padLeft = conv.padding.left
        use(.depthwisePixel)
        func pointer(_ base: String, _ ox: String) -> String {
            CExpression.offset(base, CExpression.times(ox, channels))
        }
        let flags = [row.bias != nil ? "1" : "0", row.residual != nil ? "1" : "0", activationConstant(conv.activation)]

        guard conv.kernelHeight <= depthwiseBlockMaximumKernel && kw <= depthwiseBlockMaximumKernel else {
            body.openFor("ox", to: row.outputWidth)
            body.line("const int column = \(CExpression.sum([CExpression.times("ox", stride), String(-padLeft)]));")
            body.line("const int kx0 = column < 0 ? -column : 0;")
            body.line("const int kx1 = column + \(kw) > \(row.inputWidth) ? \(row.inputWidth) - column : \(kw);")
            let arguments = [row.rows, row.weights, row.bias ?? "NULL", row.residual.map { pointer($0, "ox") } ?? "NULL",
                             pointer(row.output, "ox"), "\(channels)", "\(kw)", "column", ky0, ky1, "kx0", "kx1"] + flags
            body.line("depthwise_f32_pixel(\(arguments.joined(separator: ", ")));")
            body.close()
            return
        }

        let helper = depthwiseBlockHelper(kernelHeight: conv.kernelHeight, kernelWidth: kw, stride: stride)
        func block(_ ox: String, pixels: Int, checked: Bool) {
            let column = CExpression.sum([CExpression.times(ox, stride), String(-padLeft)])
            let arguments = [row.rows, row.weights, row.bias ?? "NULL", row.residual.map { pointer($0, ox) } ?? "NULL",
                             pointer(row.output, ox), "\(channels)", "\(row.inputWidth)", column, "\(pixels)",
                             checked ? "1" : "0", ky0, ky1] + flags
            body.line("\(helper)(\(arguments.joined(separator: ", ")));")
        }
        // A block of pixels [start, start + count) needs no checks when its first pixel's window
        // starts at column 0 or later and its last pixel's window ends inside the row.
        func isInterior(_ start: Int, _ count: Int) -> Bool {
            start * stride - padLeft >= 0 && (start + count - 1) * stride - padLeft + kw <= row.inputWidth
        }
        var start = 0
        while start < row.outputWidth {
            let count = min(depthwiseBlockPixels, row.outputWidth - start)
            guard count == depthwiseBlockPixels && isInterior(start, count) else {
                block(String(start), pixels: count, checked: !isInterior(start, count))
                start += count
                continue
            }
            var end = start + count
            while end + depthwiseBlockPixels <= row.outputWidth && isInterior(end, depthwiseBlockPixels) {
                end += depthwiseBlockPixels
            }
            if end - start == depthwiseBlockPixels {
                block(String(start), pixels: depthwiseBlockPixels, checked: false)
            } else {
                body.openFor("ox", from: start, to: end, step: depthwiseBlockPixels)
                block("ox", pixels: depthwiseBlockPixels, checked: false)
                body.close()
            }
            start = end
        }
    }
}

/// One output row of a depthwise convolution as C expressions: `rows` names the array of input
/// row pointers, `output` and `residual` point at the row's first output pixel.
struct DepthwiseRow {
    var conv: Conv2D
    var inputWidth: Int
    var outputWidth: Int
    var channels: Int
    var rows: String
    var weights: String
    var bias: String?
    var output: String
    var residual: String?
}

/// Writes the channel loop body of a block helper: `group` pixels at a time keep one
/// accumulator each, and each input column of a tap row is loaded once.
private func emitDepthwiseBlockChannels(_ text: inout CWriter, isa: CVectorISA, masked: Bool, kernelHeight kh: Int,
                                        kernelWidth kw: Int, stride: Int, group: Int) {
    text.line("const \(isa.vector) start = has_bias ? \(isa.load("bias + c", masked: masked)) : \(isa.zero);")
    var groupStart = 0
    while groupStart < depthwiseBlockPixels {
        let count = min(group, depthwiseBlockPixels - groupStart)
        text.open(groupStart == 0 ? "" : "if (pixels > \(groupStart))")
        text.line("\(isa.vector) " + (0..<count).map { "acc\($0) = start" }.joined(separator: ", ") + ";")
        for ky in 0..<kh {
            text.open("if (ky0 <= \(ky) && \(ky) < ky1)")
            text.line("const float *row = rows[\(ky)];")
            for kx in 0..<kw {
                text.line("const \(isa.vector) w\(kx) = \(isa.load("w + \(ky * kw + kx) * channels + c", masked: masked));")
            }
            for inputColumn in 0..<((count - 1) * stride + kw) {
                // The pixels b that read this column, through tap kx = inputColumn - b * stride.
                let readers = (0..<count).filter { inputColumn - $0 * stride >= 0 && inputColumn - $0 * stride < kw }
                guard let firstReader = readers.first else { continue }
                let offset = groupStart * stride + inputColumn
                var conditions = groupStart + firstReader == 0 ? [] : ["pixels > \(groupStart + firstReader)"]
                conditions.append("(!checked || (column + \(offset) >= 0 && column + \(offset) < in_width))")
                text.open("if (\(conditions.joined(separator: " && ")))")
                // The address is formed only for a column inside the row, so no pointer leaves the tensor.
                text.line("const \(isa.vector) v = \(isa.load("row + ((column + \(offset)) * channels + c)", masked: masked));")
                for b in readers {
                    let update = "acc\(b) = \(isa.fma("v", "w\(inputColumn - b * stride)", "acc\(b)"));"
                    text.line(groupStart + b == 0 || b == firstReader ? update : "if (pixels > \(groupStart + b)) \(update)")
                }
                text.close()
            }
            text.close()
        }
        for b in 0..<count {
            let pixel = groupStart + b
            text.open(pixel == 0 ? "" : "if (pixels > \(pixel))")
            text.line("\(isa.vector) value = \(isa.activate)(acc\(b), activation);")
            text.line("if (has_residual) value = \(isa.add("value", isa.load("residual + \(pixel) * channels + c", masked: masked)));")
            text.line(isa.store("y + \(pixel) * channels + c", "value", masked: masked) + ";")
            text.close()
        }
        text.close()
        groupStart += count
    }
}
