import Foundation

/// The destinations of a command's normal output and its diagnostics.
public struct CommandOutput {
    public var write: (String) -> Void
    public var writeError: (String) -> Void

    public init(write: @escaping (String) -> Void, writeError: @escaping (String) -> Void) {
        self.write = write
        self.writeError = writeError
    }

    /// Standard output and standard error through C's buffered streams: a failed write (a full
    /// disk, a closed pipe) sets the stream's error flag, which `main` checks, instead of trapping
    /// as `FileHandle.write` does.
    public static let standard = CommandOutput(
        write: { text in
            fputs(text, stdout)
        },
        writeError: { text in
            fputs(text, stderr)
        })
}

struct Command {
    var name: String
    var usage: String
    var summary: String
    var options: [OptionSpec]
    var run: (ParsedArguments, CommandOutput) throws -> Int32
}

let specOptions: [OptionSpec] = [
    OptionSpec(name: "width-multiplier", value: "A", help: "width multiplier α, scales every channel count (default: the spec's 'width', usually 1.0)"),
    OptionSpec(name: "resolution", value: "R", help: "square input size in pixels (default: the spec's 'input')"),
    OptionSpec(name: "input-size", value: "HxW", help: "input height and width in pixels, e.g. 224x192 (default: the spec's 'input')"),
    OptionSpec(name: "classes", value: "N", help: "number of output classes (default: the spec's 'classes')"),
]

let commands: [Command] = [checkCommand, dumpCommand, inspectCommand, runCommand, compileCommand]

/// Runs `mnc` with the given arguments (without the program name) and returns the exit status:
/// 0 on success, 1 on an error in the input, 2 on a usage error.
public func runCommandLine(_ arguments: [String], output: CommandOutput = .standard) -> Int32 {
    guard let first = arguments.first, first != "--help", first != "-h", first != "help" else {
        output.write(mainHelp() + "\n")
        return arguments.isEmpty ? 2 : 0
    }
    if first == "--version" {
        output.write("mnc \(mncVersion) (LLVM \(llvmVersion))\n")
        return 0
    }
    guard let command = commands.first(where: { $0.name == first }) else {
        output.writeError("error: unknown command '\(first)': expected one of \(commands.map(\.name).joined(separator: ", ")); see 'mnc --help'\n")
        return 2
    }
    let rest = Array(arguments.dropFirst())
    if rest.contains("--help") || rest.contains("-h") {
        output.write(helpText(usage: command.usage, summary: command.summary, options: command.options) + "\n")
        return 0
    }
    do {
        let parsed = try parseArguments(rest, options: command.options, command: command.name)
        return try command.run(parsed, output)
    } catch let error as MNCError {
        output.writeError("\(error)\n")
        return 1
    } catch {
        output.writeError("error: \(error)\n")
        return 1
    }
}

public let mncVersion = "0.1.0"

/// One line per command for `mnc --help`; `mnc COMMAND --help` has the full description.
let commandBriefs = [
    "check": "verify a spec and print its layers, parameters, MACs and arena size",
    "dump": "print the spec, the graph, the fused graph or the arena plan (text or Graphviz)",
    "inspect": "list the tensors of a weights file",
    "run": "run one inference with the interpreter, the generated C or LLVM",
    "compile": "generate C or LLVM code and build a library or a classifier executable",
]

func mainHelp() -> String {
    var lines = [
        "mnc \(mncVersion): an ahead-of-time compiler for MobileNet image classifiers",
        "",
        "usage: mnc COMMAND [OPTIONS]",
        "",
        "commands:",
    ]
    for command in commands {
        lines.append("  \(command.name.padding(toLength: 10, withPad: " ", startingAt: 0))\(commandBriefs[command.name] ?? "")")
    }
    lines.append("")
    lines.append("Run 'mnc COMMAND --help' for a command's options.")
    return lines.joined(separator: "\n")
}

/// Parses the spec named by the single positional argument and lowers it with the overrides.
func loadGraph(_ arguments: ParsedArguments, command: String) throws -> (Spec, Graph) {
    guard arguments.positionals.count == 1 else {
        throw MNCError("'mnc \(command)' takes one spec file, found \(arguments.positionals.count) arguments: see 'mnc \(command) --help'")
    }
    var overrides = SpecOverrides()
    overrides.widthMultiplier = try arguments.number("width-multiplier", valid: { $0 > 0 && $0 <= 16 },
                                                     form: "a number in (0, 16]")
    if let resolution = try arguments.integer("resolution", in: 1...16384) {
        overrides.inputHeight = resolution
        overrides.inputWidth = resolution
    }
    if let size = arguments.value("input-size") {
        guard !arguments.has("resolution") else {
            throw MNCError("give either --resolution or --input-size, not both")
        }
        let parts = size.split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard parts.count == 2, let height = parts[0], let width = parts[1],
              (1...16384).contains(height), (1...16384).contains(width) else {
            throw MNCError("invalid value '\(size)' for --input-size: expected HEIGHTxWIDTH in pixels, e.g. 224x192")
        }
        overrides.inputHeight = height
        overrides.inputWidth = width
    }
    overrides.classes = try arguments.integer("classes", in: 1...1_000_000)
    let spec = try parseSpecFile(path: arguments.positionals[0]).applying(overrides)
    return (spec, try lower(spec))
}
