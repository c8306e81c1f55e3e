let dumpCommand = Command(
    name: "dump",
    usage: "mnc dump SPEC [--stage spec|graph] [--format text|dot] [spec options]",
    summary: """
    Print a compilation stage: the parsed spec ('spec') or the graph IR with shapes and
    parameter keys ('graph'), as text or as a Graphviz digraph ('--format dot').
    """,
    options: specOptions + [
        OptionSpec(name: "stage", value: "STAGE", help: "what to print: spec or graph (default: graph)"),
        OptionSpec(name: "format", value: "FORMAT", help: "text or dot (Graphviz; graph stages only) (default: text)"),
    ],
    run: { arguments, output in
        let stage = try arguments.choice("stage", ["spec", "graph"], default: "graph")
        let format = try arguments.choice("format", ["text", "dot"], default: "text")
        let (spec, graph) = try loadGraph(arguments, command: "dump")
        switch (stage, format) {
        case ("spec", "dot"):
            throw MNCError("--format dot applies to graph stages; '--stage spec' prints text")
        case ("spec", _):
            output.write(spec.textDump())
        case (_, "dot"):
            output.write(graph.dotDump())
        default:
            output.write(graph.textDump())
        }
        return 0
    })
