let dumpCommand = Command(
    name: "dump",
    usage: "mnc dump SPEC [--stage spec|graph|fused|planned] [--format text|dot] [-O0|-O2] [--disable-pass NAME] [spec options]",
    summary: """
    Print a compilation stage: the parsed spec ('spec'), the graph IR with shapes and parameter
    keys ('graph'), the graph after the optimization passes ('fused'), or the fused graph with
    its arena plan: each buffer's offset, size and lifetime and the arena over time ('planned').
    Graph stages print as text or as a Graphviz digraph ('--format dot').
    """,
    options: specOptions + optimizationOptions + [
        OptionSpec(name: "stage", value: "STAGE", help: "what to print: spec, graph, fused or planned (default: graph)"),
        OptionSpec(name: "format", value: "FORMAT", help: "text or dot (Graphviz; graph stages only) (default: text)"),
    ],
    run: { arguments, output in
        let stage = try arguments.choice("stage", ["spec", "graph", "fused", "planned"], default: "graph")
        let format = try arguments.choice("format", ["text", "dot"], default: "text")
        let (spec, graph) = try loadGraph(arguments, command: "dump")
        if stage == "spec" {
            guard format == "text" else {
                throw MNCError("--format dot applies to graph stages; '--stage spec' prints text")
            }
            output.write(spec.textDump())
            return 0
        }
        let shown = stage == "graph" ? graph : try optimize(graph, options: arguments)
        if format == "dot" {
            output.write(shown.dotDump())
            return 0
        }
        output.write(shown.textDump())
        if stage == "planned" {
            let plan = planArena(shown)
            try verifyPlan(plan)
            output.write("\n" + plan.textDump(graph: shown))
        }
        return 0
    })

let optimizationOptions: [OptionSpec] = [
    OptionSpec(name: "O0", value: nil, help: "run no optimization pass (-O1, -O2 and -O3 run all of them; default -O2)"),
    OptionSpec(name: "disable-pass", value: "NAME", help: "skip one pass: \(defaultPasses.map(\.name).joined(separator: ", ")) (repeatable)", repeatable: true),
]

/// Runs the pass pipeline selected by `-O` and `--disable-pass`.
func optimize(_ graph: Graph, options arguments: ParsedArguments) throws -> Graph {
    let level = Int(arguments.value("optimization") ?? "2") ?? 2
    return try optimize(graph, level: level, disabled: Set(arguments.values["disable-pass"] ?? []))
}
