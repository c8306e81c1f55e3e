import Foundation

let checkCommand = Command(
    name: "check",
    usage: "mnc check SPEC [--width-multiplier A] [--resolution R | --input-size HxW] [--classes N] [--json]",
    summary: """
    Parse a spec, lower it to the graph IR, verify it, and print each layer's op, output shape,
    trainable parameters and multiply-accumulates (MACs), with totals.
    """,
    options: specOptions + [
        OptionSpec(name: "json", value: nil, help: "print one JSON object with parameters, macs and layers"),
    ],
    run: { arguments, output in
        let (spec, graph) = try loadGraph(arguments, command: "check")
        // The arena that the generated code needs on one thread: values and the kernels'
        // scratch areas (fused blocks keep their rings there).
        let plan = planArena(try optimize(graph), alignment: cArenaAlignment, scratchBytes: cScratchBytes)
        try verifyPlan(plan)
        if arguments.has("json") {
            output.write(try checkReportJSON(spec: spec, graph: graph, plan: plan) + "\n")
        } else {
            output.write(checkReportText(spec: spec, graph: graph, plan: plan))
        }
        return 0
    })

/// Formats a shape without the batch dimension: `32x112x112` for `[1, 32, 112, 112]`.
func formatShape(_ shape: [Int]) -> String {
    shape.dropFirst().map(String.init).joined(separator: "x")
}

/// Formats an integer with thousands separators: `3,504,872`.
func formatCount(_ value: Int) -> String {
    let digits = String(value)
    var result = ""
    for (offset, character) in digits.enumerated() {
        if offset > 0 && (digits.count - offset) % 3 == 0 { result.append(",") }
        result.append(character)
    }
    return result
}

func checkReportText(spec: Spec, graph: Graph, plan: ArenaPlan) -> String {
    var rows: [[String]] = [["#", "name", "op", "output", "params", "MACs"]]
    for (index, node) in graph.nodes.enumerated() {
        rows.append([String(index), node.name, node.fusedOps.joined(separator: " + "), formatShape(node.shape),
                     formatCount(node.trainableParameterCount), formatCount(node.multiplyAccumulates)])
    }
    let widths = (0..<6).map { column in rows.map { $0[column].count }.max() ?? 0 }
    var text = "\(graph.name): input \(formatShape(graph.inputShape)) (\(graph.preprocessing.layout.rawValue.uppercased()) in memory), "
    text += "width multiplier \(spec.widthMultiplier), \(spec.classes) classes\n\n"
    for row in rows {
        var line = ""
        for (column, cell) in row.enumerated() {
            let pad = String(repeating: " ", count: widths[column] - cell.count)
            line += column >= 4 || column == 0 ? pad + cell : cell + pad
            if column < 5 { line += "  " }
        }
        while line.hasSuffix(" ") { line.removeLast() }
        text += line + "\n"
    }
    text += "\n"
    text += "parameters: \(formatCount(graph.trainableParameterCount)) (trainable; BatchNorm running statistics excluded)\n"
    text += "MACs:       \(formatCount(graph.multiplyAccumulates)) (convolutions and linear layers)\n"
    text += "arena:      \(formatCount(plan.size)) bytes (generated code, one thread; lower bound \(formatCount(plan.lowerBound)), without reuse \(formatCount(plan.totalBufferBytes)))\n"
    text += "output:     \(formatShape(graph.outputShape))\n"
    return text
}

func checkReportJSON(spec: Spec, graph: Graph, plan: ArenaPlan) throws -> String {
    let layers: [[String: Any]] = graph.nodes.enumerated().map { index, node in
        [
            "index": index,
            "name": node.name,
            "op": node.fusedOps.joined(separator: " + "),
            "shape": node.shape,
            "parameters": node.trainableParameterCount,
            "macs": node.multiplyAccumulates,
        ]
    }
    let report: [String: Any] = [
        "network": graph.name,
        "width_multiplier": spec.widthMultiplier,
        "classes": spec.classes,
        "input_shape": graph.inputShape,
        "output_shape": graph.outputShape,
        "parameters": graph.trainableParameterCount,
        "macs": graph.multiplyAccumulates,
        "arena_bytes": plan.size,
        "arena_lower_bound_bytes": plan.lowerBound,
        "layers": layers,
    ]
    let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}
