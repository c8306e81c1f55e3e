/// The parsed spec in its canonical text form, as `mnc dump --stage spec` prints it.
extension Spec {
    public func textDump() -> String {
        var lines = [
            "network \(name)",
            "input \(inputHeight)x\(inputWidth) channels \(inputChannels)",
            "classes \(classes)",
            "width \(widthMultiplier)",
        ]
        switch rounding {
        case .makeDivisible(let divisor): lines.append("rounding make_divisible \(divisor)")
        case .floor(let minimum): lines.append("rounding floor \(minimum)")
        }
        lines.append("padding \(padding.rawValue)")
        lines.append("batchnorm epsilon \(batchNormEpsilon)")
        var preprocess = "preprocess"
        if let side = preprocessing.resizeShorterSide { preprocess += " resize_shorter \(side)" }
        preprocess += " crop \(preprocessing.cropFraction)"
        preprocess += " mean " + preprocessing.mean.map { "\($0)" }.joined(separator: " ")
        preprocess += " std " + preprocessing.std.map { "\($0)" }.joined(separator: " ")
        preprocess += " layout \(preprocessing.layout.rawValue)"
        lines.append(preprocess)
        if reducedTail { lines.append("reduced_tail") }
        lines.append("")

        for layer in layers {
            switch layer {
            case .conv(let conv):
                var line = "conv \(conv.kernel)x\(conv.kernel) stride \(conv.stride) out \(describe(conv.out))"
                line += " act \(conv.activation.rawValue)"
                if conv.hasBias { line += " bias" }
                if !conv.hasBatchNorm { line += " norm none" }
                lines.append(line)
            case .separable(let activation, let rows, _):
                lines.append("separable act \(activation.rawValue)")
                lines.append("#    c    n  s")
                for row in rows { lines.append(columns([row.channels, row.repeats, row.stride].map(String.init))) }
                lines.append("end")
            case .invertedResidual(let activation, let rows, _):
                lines.append("inverted_residual act \(activation.rawValue)")
                lines.append("#    t     c    n  s")
                for row in rows {
                    lines.append(columns(["\(row.expansion)", "\(row.channels)", "\(row.repeats)", "\(row.stride)"]))
                }
                lines.append("end")
            case .bottleneck(let gate, let rows, _):
                lines.append("bneck gate \(gate.rawValue)")
                lines.append("# input_c kernel expanded_c out_c use_se activation stride")
                for row in rows {
                    lines.append(columns([
                        "\(row.inputChannels)", "\(row.kernel)", "\(row.expandedChannels)", "\(row.outChannels)",
                        row.useSqueezeExcite ? "True" : "False", row.activation == .hardswish ? "HS" : row.activation == .relu ? "RE" : row.activation.rawValue,
                        "\(row.stride)",
                    ]))
                }
                lines.append("end")
            case .globalAveragePool:
                lines.append("pool avg")
            case .dropout(let probability, _):
                lines.append("dropout \(probability)")
            case .linear(let out, let activation, let hasBias, _):
                var line = "linear \(describe(out))"
                if activation != .identity { line += " act \(activation.rawValue)" }
                if !hasBias { line += " bias false" }
                lines.append(line)
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func describe(_ count: ChannelCount) -> String {
        switch count {
        case .scaled(let value): return "\(value)"
        case .scaledUpOnly(let value): return "\(value) scale up_only"
        case .fixed(let value): return "\(value) scale none"
        case .classes: return "classes"
        case .timesInput(let factor): return "\(factor)x"
        }
    }

    private func columns(_ cells: [String]) -> String {
        "  " + cells.map { $0.count >= 6 ? $0 : String(repeating: " ", count: 6 - $0.count) + $0 }.joined(separator: " ")
    }
}
