/// Text renderings of an arena plan for `mnc dump --stage planned`.
extension ArenaPlan {
    /// Formats the buffer table (offset, size, lifetime) followed by the arena over time: one line per
    /// step, one column per `arena size / width` bytes, each live buffer drawn with its letter.
    public func textDump(graph: Graph, width: Int = 64) -> String {
        var lines: [String] = []
        lines.append("arena: \(formatCount(size)) bytes (alignment \(alignment))")
        lines.append("lower bound: \(formatCount(lowerBound)) bytes (largest total of buffers live at one step)")
        lines.append("without reuse: \(formatCount(totalBufferBytes)) bytes (sum of all buffers)")
        lines.append("")
        lines.append("buffers (steps are node indices; input and output live in the caller's buffers):")
        let symbols = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        for (number, buffer) in buffers.enumerated() {
            let node = graph.nodes[buffer.node]
            let kind = buffer.isScratch ? "scratch of" : "value of"
            let symbol = symbols[number % symbols.count]
            lines.append("  \(symbol) offset \(pad(formatCount(buffer.offset), 11)) size \(pad(formatCount(buffer.size), 11)) steps \(pad("\(buffer.firstStep)...\(buffer.lastStep)", 9)) \(kind) %\(buffer.node) \(node.name)")
        }
        lines.append("")
        lines.append("arena over time (each column is \(formatCount(max(size / width, 1))) bytes; '.' is free):")
        for step in graph.nodes.indices {
            var row = [Character](repeating: ".", count: width)
            for (number, buffer) in buffers.enumerated() where buffer.firstStep <= step && step <= buffer.lastStep && size > 0 {
                let first = buffer.offset * width / size
                let last = max(first, (buffer.offset + buffer.size) * width / size - 1)
                for column in first...min(last, width - 1) {
                    row[column] = symbols[number % symbols.count]
                }
            }
            lines.append("  \(pad(String(step), 4)) |\(String(row))| \(graph.nodes[step].fusedOps.joined(separator: " + "))")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}
