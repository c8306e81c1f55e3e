/// A command-line option of an `mnc` command.
struct OptionSpec {
    /// The long name without dashes, e.g. `width-multiplier`.
    var name: String
    /// The value's placeholder in help text (`A`, `N`, `FILE`), or nil for a flag.
    var value: String?
    /// The help line: the value the option sets, with its unit and default.
    var help: String
    /// True when the option may be given more than once.
    var repeatable = false
}

struct ParsedArguments {
    var positionals: [String] = []
    var values: [String: [String]] = [:]
    var flags: Set<String> = []

    func value(_ name: String) -> String? { values[name]?.last }
    func has(_ name: String) -> Bool { flags.contains(name) || values[name] != nil }

    func integer(_ name: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let text = value(name) else { return nil }
        guard let number = Int(text), range.contains(number) else {
            throw MNCError("invalid value '\(text)' for --\(name): expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return number
    }

    func number(_ name: String, valid: (Double) -> Bool, form: String) throws -> Double? {
        guard let text = value(name) else { return nil }
        guard let number = Double(text), number.isFinite, valid(number) else {
            throw MNCError("invalid value '\(text)' for --\(name): expected \(form)")
        }
        return number
    }

    func choice(_ name: String, _ choices: [String], default defaultValue: String) throws -> String {
        guard let text = value(name) else { return defaultValue }
        guard choices.contains(text) else {
            throw MNCError("invalid value '\(text)' for --\(name): expected one of \(choices.joined(separator: ", "))")
        }
        return text
    }
}

/// Parses `--name value`, `--name=value` and `--flag` options and positional arguments.
func parseArguments(_ arguments: [String], options: [OptionSpec], command: String) throws -> ParsedArguments {
    var parsed = ParsedArguments()
    var index = 0
    var optionsEnded = false
    while index < arguments.count {
        let argument = arguments[index]
        index += 1
        if optionsEnded || !argument.hasPrefix("-") || argument == "-" {
            parsed.positionals.append(argument)
            continue
        }
        if argument == "--" {
            optionsEnded = true
            continue
        }
        var name = String(argument.drop { $0 == "-" })
        var inlineValue: String?
        if let equals = name.firstIndex(of: "=") {
            inlineValue = String(name[name.index(after: equals)...])
            name = String(name[..<equals])
        }
        if name == "O0" || name == "O1" || name == "O2" || name == "O3" {
            parsed.values["optimization", default: []].append(String(name.dropFirst()))
            continue
        }
        guard let option = options.first(where: { $0.name == name }) else {
            throw MNCError("unknown option '\(argument)' for 'mnc \(command)': see 'mnc \(command) --help'")
        }
        if option.value == nil {
            guard inlineValue == nil else {
                throw MNCError("option --\(name) takes no value")
            }
            parsed.flags.insert(name)
            continue
        }
        let value: String
        if let inlineValue {
            value = inlineValue
        } else {
            guard index < arguments.count else {
                throw MNCError("option --\(name) needs a value \(option.value ?? "")")
            }
            value = arguments[index]
            index += 1
        }
        if !option.repeatable, parsed.values[name] != nil {
            throw MNCError("option --\(name) is given more than once")
        }
        parsed.values[name, default: []].append(value)
    }
    return parsed
}

/// Formats a command's help text: usage, description and one line per option.
func helpText(usage: String, summary: String, options: [OptionSpec]) -> String {
    var lines = ["usage: \(usage)", "", summary]
    if !options.isEmpty {
        lines.append("")
        lines.append("options:")
        let labels = options.map { option in
            // -o and -O0 are written with one dash, as compilers write them.
            (option.name.count == 1 || option.name == "O0" ? "-" : "--") + option.name + (option.value.map { " \($0)" } ?? "")
        }
        let width = min((labels.map(\.count).max() ?? 0) + 2, 30)
        for (label, option) in zip(labels, options) {
            let padding = String(repeating: " ", count: max(width - label.count, 1))
            lines.append("  \(label)\(padding)\(option.help)")
        }
    }
    return lines.joined(separator: "\n")
}
