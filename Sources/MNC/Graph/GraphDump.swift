/// Text and Graphviz renderings of a graph, as `mnc dump` prints them.
extension Graph {
    /// One line per node: `%index = ops(%inputs) : shape  name  [parameter keys]`.
    public func textDump() -> String {
        var lines = ["graph \(name) {"]
        for (index, node) in nodes.enumerated() {
            let inputs = node.inputs.map { "%\($0)" }.joined(separator: ", ")
            var line = "  %\(index) = \(node.fusedOps.joined(separator: " + "))(\(inputs)) : \(formatShape(node.shape))"
            let attributes = node.attributeSummary
            if !attributes.isEmpty { line += " {\(attributes)}" }
            line += "  \(node.name)"
            if !node.parameters.isEmpty {
                line += "  [" + node.parameters.map { "\($0.key) \(formatDimensions($0.shape))" }.joined(separator: ", ") + "]"
            }
            lines.append(line)
        }
        lines.append("  return %\(output)")
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// A Graphviz digraph with one box per node, labelled with its ops, shape and name.
    public func dotDump() -> String {
        var lines = ["digraph \"\(name)\" {", "  rankdir=TB;", "  node [shape=box, fontname=\"Helvetica\", fontsize=10];"]
        for (index, node) in nodes.enumerated() {
            var label = node.fusedOps.joined(separator: " + ") + "\\n" + formatShape(node.shape)
            let attributes = node.attributeSummary
            if !attributes.isEmpty { label += "\\n" + attributes }
            label += "\\n" + node.name
            lines.append("  n\(index) [label=\"\(escapeDot(label))\"\(index == output ? ", peripheries=2" : "")];")
        }
        for (index, node) in nodes.enumerated() {
            for input in node.inputs {
                lines.append("  n\(input) -> n\(index);")
            }
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }
}

extension Node {
    /// The op's attributes in a short form: stride, padding, groups, activation, epsilon.
    var attributeSummary: String {
        switch op {
        case .conv2d(let conv):
            var parts = ["stride \(conv.strideHeight)", "pad \(conv.padding)"]
            if conv.groups > 1 { parts.append("groups \(conv.groups)") }
            if conv.activation != .identity { parts.append("act \(conv.activation.rawValue)") }
            if conv.hasResidual { parts.append("residual") }
            return parts.joined(separator: ", ")
        case .batchNorm(let epsilon):
            return "eps \(epsilon)"
        case .linear(let linear):
            return linear.activation == .identity ? "" : "act \(linear.activation.rawValue)"
        case .dropout(let probability):
            return "p \(probability)"
        case .squeezeExcite(let se):
            return "squeeze \(se.squeezeChannels), \(se.activation.rawValue), gate \(se.gate.rawValue)"
        case .fusedBlock(let block):
            var stages = block.stages.map { prefix, conv in
                var parts = ["\(prefix) \(conv.kernelHeight)x\(conv.kernelWidth) stride \(conv.strideHeight) pad \(conv.padding)"]
                if conv.activation != .identity { parts.append(conv.activation.rawValue) }
                if conv.hasResidual { parts.append("residual") }
                return parts.joined(separator: " ")
            }
            if let se = block.squeezeExcite {
                stages.insert("se squeeze \(se.squeezeChannels) \(se.activation.rawValue) gate \(se.gate.rawValue)", at: stages.count - 1)
            }
            return stages.joined(separator: "; ")
        default:
            return ""
        }
    }
}

func formatDimensions(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ",") + "]"
}

/// Escapes a label for a double-quoted DOT string; `\n` line breaks are kept.
private func escapeDot(_ text: String) -> String {
    text.replacingOccurrences(of: "\"", with: "\\\"")
}
