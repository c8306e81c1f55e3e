import Foundation

/// The largest spec file accepted. Real specs are a few kilobytes.
public let maxSpecFileSize = 1 << 20

/// Reads and parses a `.mnet` file.
public func parseSpecFile(path: String) throws -> Spec {
    let url = URL(fileURLWithPath: path)
    let attributes: [FileAttributeKey: Any]
    do {
        attributes = try FileManager.default.attributesOfItem(atPath: path)
    } catch {
        throw MNCError("cannot read spec '\(path)': file not found or not readable")
    }
    if let type = attributes[.type] as? FileAttributeType, type == .typeDirectory {
        throw MNCError("cannot read spec '\(path)': it is a directory")
    }
    let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
    guard size <= maxSpecFileSize else {
        throw MNCError("spec '\(path)' is \(size) bytes; a spec is at most \(maxSpecFileSize) bytes")
    }
    guard let data = try? Data(contentsOf: url) else {
        throw MNCError("cannot read spec '\(path)'")
    }
    return try parseSpec(data: data, file: path)
}

/// Parses spec text. `file` names the source in error messages.
public func parseSpec(data: Data, file: String) throws -> Spec {
    guard data.count <= maxSpecFileSize else {
        throw MNCError("spec '\(file)' is \(data.count) bytes; a spec is at most \(maxSpecFileSize) bytes")
    }
    let lines = try tokenizeSpec(data: data, file: file)
    var parser = SpecParser(file: file, lines: lines)
    return try parser.parse()
}

struct SpecToken {
    var text: String
    var location: SourceLocation
}

struct SpecLine {
    var tokens: [SpecToken]
    var number: Int
}

/// Splits the text into lines of whitespace-separated tokens, dropping `#` comments and blank lines.
func tokenizeSpec(data: Data, file: String) throws -> [SpecLine] {
    var lineNumber = 1
    var column = 1
    for byte in data {
        if byte == 0 || (byte < 0x20 && byte != 0x0A && byte != 0x0D && byte != 0x09) {
            throw MNCError(String(format: "unexpected control byte 0x%02X: a spec is a text file", byte),
                           at: SourceLocation(file: file, line: lineNumber, column: column))
        }
        if byte == 0x0A {
            lineNumber += 1
            column = 1
        } else {
            column += 1
        }
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw MNCError("the file is not valid UTF-8 text", at: SourceLocation(file: file, line: 1, column: 1))
    }

    // Swift treats "\r\n" as one Character, so CRLF files are split on Unicode scalars.
    var lines: [SpecLine] = []
    let rawLines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { String(String.UnicodeScalarView($0)) }
    for (index, rawLine) in rawLines.enumerated() {
        var tokens: [SpecToken] = []
        var current = ""
        var start = 0
        var col = 0
        for character in rawLine {
            col += 1
            if character == "#" { break }
            if character == " " || character == "\t" || character == "\r" {
                if !current.isEmpty {
                    tokens.append(SpecToken(text: current, location: SourceLocation(file: file, line: index + 1, column: start)))
                    current = ""
                }
                continue
            }
            if current.isEmpty { start = col }
            current.append(character)
        }
        if !current.isEmpty {
            tokens.append(SpecToken(text: current, location: SourceLocation(file: file, line: index + 1, column: start)))
        }
        if !tokens.isEmpty {
            lines.append(SpecLine(tokens: tokens, number: index + 1))
        }
    }
    return lines
}

private let activationNames: [String: Activation] = [
    "identity": .identity, "linear": .identity, "none": .identity,
    "relu": .relu, "RE": .relu,
    "relu6": .relu6,
    "hardswish": .hardswish, "HS": .hardswish,
    "hardsigmoid": .hardsigmoid,
    "hardsigmoid_linear": .hardsigmoidLinear,
]

/// Header settings, each allowed once per spec.
private let headerKeywords: Set<String> = [
    "network", "input", "classes", "width", "rounding", "padding", "batchnorm", "preprocess", "reduced_tail",
]

private let activationForm = "relu, relu6, hardswish, hardsigmoid, hardsigmoid_linear or identity"

struct SpecParser {
    let file: String
    let lines: [SpecLine]
    var index = 0

    init(file: String, lines: [SpecLine]) {
        self.file = file
        self.lines = lines
    }

    mutating func parse() throws -> Spec {
        guard !lines.isEmpty else {
            throw MNCError("the spec is empty: expected 'network NAME' followed by the input and layers",
                           at: SourceLocation(file: file, line: 1, column: 1))
        }
        var spec = Spec(file: file, name: "", inputHeight: 0, inputWidth: 0, inputChannels: 3, classes: 1000,
                        widthMultiplier: 1.0, rounding: .makeDivisible(divisor: 8), padding: .symmetric,
                        batchNormEpsilon: 1e-5, preprocessing: Preprocessing(), reducedTail: false,
                        layers: [], headerLocations: [:])

        var seenHeader: [String: SourceLocation] = [:]
        while index < lines.count {
            let line = lines[index]
            index += 1
            let keyword = line.tokens[0]
            var cursor = TokenCursor(line: line, file: file)
            cursor.advance()
            if headerKeywords.contains(keyword.text) {
                if let first = seenHeader[keyword.text] {
                    throw MNCError("duplicate '\(keyword.text)' line: it is already set at line \(first.line); give each setting once",
                                   at: keyword.location)
                }
                seenHeader[keyword.text] = keyword.location
            }
            switch keyword.text {
            case "network":
                let token = try cursor.next(expecting: "a network name")
                guard isIdentifier(token.text) else {
                    throw MNCError("invalid network name '\(token.text)': expected letters, digits and '_', starting with a letter",
                                   at: token.location)
                }
                spec.name = token.text
                try cursor.end()
            case "input":
                let token = try cursor.next(expecting: "an input size such as 224 or 224x192")
                let (height, width) = try parseSize(token)
                spec.inputHeight = height
                spec.inputWidth = width
                spec.headerLocations["input"] = token.location
                while let option = cursor.peek() {
                    cursor.advance()
                    try cursor.checkFirstUse(of: option)
                    switch option.text {
                    case "channels":
                        spec.inputChannels = try cursor.integer(in: 1...64, expecting: "an input channel count")
                    default:
                        throw MNCError("unexpected '\(option.text)': expected 'channels N' or the end of the line",
                                       at: option.location)
                    }
                }
            case "classes":
                spec.classes = try cursor.integer(in: 1...1_000_000, expecting: "a class count")
                try cursor.end()
            case "width":
                spec.widthMultiplier = try cursor.number(expecting: "a width multiplier α in (0, 16]",
                                                         valid: { $0 > 0 && $0 <= 16 })
                try cursor.end()
            case "rounding":
                let rule = try cursor.next(expecting: "'make_divisible N' or 'floor N'")
                switch rule.text {
                case "make_divisible":
                    spec.rounding = .makeDivisible(divisor: try cursor.integer(in: 1...1024, expecting: "a divisor"))
                case "floor":
                    spec.rounding = .floor(minimum: try cursor.integer(in: 1...1024, expecting: "a minimum channel count"))
                default:
                    throw MNCError("unknown rounding rule '\(rule.text)': expected 'make_divisible N' or 'floor N'",
                                   at: rule.location)
                }
                try cursor.end()
            case "padding":
                let mode = try cursor.next(expecting: "'symmetric' or 'same'")
                guard let padding = PaddingMode(rawValue: mode.text) else {
                    throw MNCError("unknown padding '\(mode.text)': expected 'symmetric' (PyTorch) or 'same' (TensorFlow)",
                                   at: mode.location)
                }
                spec.padding = padding
                try cursor.end()
            case "batchnorm":
                try cursor.expectKeyword("epsilon")
                spec.batchNormEpsilon = Float(try cursor.number(expecting: "a BatchNorm epsilon in (0, 1)",
                                                                valid: { $0 > 0 && $0 < 1 }))
                try cursor.end()
            case "preprocess":
                try parsePreprocess(&cursor, into: &spec.preprocessing)
            case "reduced_tail":
                spec.reducedTail = true
                try cursor.end()
            case "conv":
                spec.layers.append(.conv(try parseConv(&cursor, keyword: keyword)))
            case "separable", "inverted_residual", "bneck":
                spec.layers.append(try parseTable(&cursor, keyword: keyword))
            case "pool":
                let kind = try cursor.next(expecting: "'avg'")
                guard kind.text == "avg" else {
                    throw MNCError("unknown pool '\(kind.text)': expected 'avg' (global average pooling)", at: kind.location)
                }
                try cursor.end()
                spec.layers.append(.globalAveragePool(location: keyword.location))
            case "dropout":
                let probability = try cursor.number(expecting: "a drop probability in [0, 1)", valid: { $0 >= 0 && $0 < 1 })
                try cursor.end()
                spec.layers.append(.dropout(probability: Float(probability), location: keyword.location))
            case "linear":
                spec.layers.append(try parseLinear(&cursor, keyword: keyword))
            case "end":
                throw MNCError("'end' without a table: expected it after the rows of a separable, inverted_residual or bneck table",
                               at: keyword.location)
            default:
                if Double(keyword.text) != nil {
                    throw MNCError("table row '\(keyword.text) ...' outside a table: expected a 'separable', 'inverted_residual' or 'bneck' line before it",
                                   at: keyword.location)
                }
                throw MNCError("unknown keyword '\(keyword.text)': expected network, input, classes, width, rounding, padding, batchnorm, preprocess, reduced_tail, conv, separable, inverted_residual, bneck, pool, dropout or linear",
                               at: keyword.location)
            }
        }

        let start = SourceLocation(file: file, line: lines[0].number, column: 1)
        guard !spec.name.isEmpty else {
            throw MNCError("missing 'network NAME' line", at: start)
        }
        guard spec.inputHeight > 0 else {
            throw MNCError("missing 'input SIZE' line (e.g. 'input 224')", at: start)
        }
        guard !spec.layers.isEmpty else {
            throw MNCError("the spec has no layers: expected conv, separable, inverted_residual, bneck, pool or linear lines",
                           at: start)
        }
        return spec
    }

    private func parseSize(_ token: SpecToken) throws -> (Int, Int) {
        let parts = token.text.split(separator: "x", omittingEmptySubsequences: false)
        let values = parts.map { Int($0) }
        guard (parts.count == 1 || parts.count == 2), let height = values[0], let width = values.last ?? nil else {
            throw MNCError("invalid input size '\(token.text)': expected SIZE or HEIGHTxWIDTH in pixels, e.g. 224 or 224x192",
                           at: token.location)
        }
        guard (1...16384).contains(height), (1...16384).contains(width) else {
            throw MNCError("invalid input size '\(token.text)': each side must be 1...16384 pixels", at: token.location)
        }
        return (height, width)
    }

    private func parsePreprocess(_ cursor: inout TokenCursor, into preprocessing: inout Preprocessing) throws {
        guard cursor.peek() != nil else {
            throw MNCError("expected preprocessing options (resize_shorter N, crop F, mean R G B, std R G B, layout nchw|nhwc) after 'preprocess'",
                           at: cursor.line.tokens[0].location)
        }
        while let option = cursor.peek() {
            cursor.advance()
            try cursor.checkFirstUse(of: option)
            switch option.text {
            case "resize_shorter":
                preprocessing.resizeShorterSide = try cursor.integer(in: 1...16384, expecting: "the shorter side in pixels")
            case "crop":
                preprocessing.cropFraction = try cursor.number(expecting: "the centre crop fraction in (0, 1]",
                                                               valid: { $0 > 0 && $0 <= 1 })
            case "mean":
                preprocessing.mean = try (0..<3).map { _ in
                    try cursor.number(expecting: "three channel means in pixel units (0...255)", valid: { $0 >= -1e4 && $0 <= 1e4 })
                }
            case "std":
                preprocessing.std = try (0..<3).map { _ in
                    try cursor.number(expecting: "three positive channel standard deviations in pixel units",
                                      valid: { $0 > 0 && $0 <= 1e4 })
                }
            case "layout":
                let value = try cursor.next(expecting: "'nchw' or 'nhwc'")
                guard let layout = TensorLayout(rawValue: value.text) else {
                    throw MNCError("unknown layout '\(value.text)': expected 'nchw' or 'nhwc'", at: value.location)
                }
                preprocessing.layout = layout
            default:
                throw MNCError("unknown preprocessing option '\(option.text)': expected resize_shorter, crop, mean, std or layout",
                               at: option.location)
            }
        }
    }

    private func parseActivation(_ cursor: inout TokenCursor) throws -> Activation {
        let token = try cursor.next(expecting: "an activation (\(activationForm))")
        guard let activation = activationNames[token.text] else {
            throw MNCError("unknown activation '\(token.text)': expected \(activationForm)", at: token.location)
        }
        return activation
    }

    private func parseChannelCount(_ cursor: inout TokenCursor) throws -> ChannelCount {
        let token = try cursor.next(expecting: "a channel count, 'classes' or a multiple such as '6x'")
        if token.text == "classes" { return .classes }
        if token.text.hasSuffix("x"), let factor = Int(token.text.dropLast()) {
            guard (1...64).contains(factor) else {
                throw MNCError("invalid channel multiple '\(token.text)': expected 1x...64x", at: token.location)
            }
            return .timesInput(factor)
        }
        guard let count = Int(token.text) else {
            throw MNCError("invalid channel count '\(token.text)': expected a positive integer, 'classes' or a multiple such as '6x'",
                           at: token.location)
        }
        guard (1...100_000).contains(count) else {
            throw MNCError("invalid channel count '\(token.text)': expected 1...100000", at: token.location)
        }
        return .scaled(count)
    }

    private func applyScale(_ count: ChannelCount, _ cursor: inout TokenCursor) throws -> ChannelCount {
        let token = try cursor.next(expecting: "'alpha', 'up_only' or 'none'")
        guard case .scaled(let value) = count else {
            throw MNCError("'scale' applies to a plain channel count such as 'out 1280', not to 'classes' or a multiple such as '6x'",
                           at: token.location)
        }
        switch token.text {
        case "alpha": return .scaled(value)
        case "up_only": return .scaledUpOnly(value)
        case "none": return .fixed(value)
        default:
            throw MNCError("unknown scale '\(token.text)': expected 'alpha' (scaled by the width multiplier), 'up_only' (scaled only when α > 1) or 'none'",
                           at: token.location)
        }
    }

    private func parseConv(_ cursor: inout TokenCursor, keyword: SpecToken) throws -> ConvStatement {
        let kernelToken = try cursor.next(expecting: "a kernel size such as 3x3")
        let sides = kernelToken.text.split(separator: "x", omittingEmptySubsequences: false)
        guard sides.count == 2, let kh = Int(sides[0]), let kw = Int(sides[1]), kh == kw, [1, 3, 5, 7].contains(kh) else {
            throw MNCError("invalid kernel '\(kernelToken.text)': expected a square odd kernel 1x1, 3x3, 5x5 or 7x7",
                           at: kernelToken.location)
        }
        var statement = ConvStatement(kernel: kh, stride: 1, out: .scaled(0), activation: .identity,
                                      hasBias: false, hasBatchNorm: true, location: keyword.location)
        var sawOut = false
        while let option = cursor.peek() {
            cursor.advance()
            try cursor.checkFirstUse(of: option)
            switch option.text {
            case "stride":
                statement.stride = try cursor.stride()
            case "out":
                statement.out = try parseChannelCount(&cursor)
                sawOut = true
            case "scale":
                statement.out = try applyScale(statement.out, &cursor)
            case "act":
                statement.activation = try parseActivation(&cursor)
            case "bias":
                statement.hasBias = true
            case "norm":
                let value = try cursor.next(expecting: "'batchnorm' or 'none'")
                switch value.text {
                case "batchnorm": statement.hasBatchNorm = true
                case "none": statement.hasBatchNorm = false
                default:
                    throw MNCError("unknown norm '\(value.text)': expected 'batchnorm' or 'none'", at: value.location)
                }
            default:
                throw MNCError("unknown conv option '\(option.text)': expected stride, out, scale, act, bias or norm",
                               at: option.location)
            }
        }
        guard sawOut else {
            throw MNCError("conv needs 'out C' (output channels)", at: keyword.location)
        }
        return statement
    }

    private func parseLinear(_ cursor: inout TokenCursor, keyword: SpecToken) throws -> LayerStatement {
        var out = try parseChannelCount(&cursor)
        if case .timesInput = out {
            throw MNCError("linear takes a feature count or 'classes', not a multiple", at: keyword.location)
        }
        var activation = Activation.identity
        var hasBias = true
        while let option = cursor.peek() {
            cursor.advance()
            try cursor.checkFirstUse(of: option)
            switch option.text {
            case "scale":
                out = try applyScale(out, &cursor)
            case "act":
                activation = try parseActivation(&cursor)
            case "bias":
                let value = try cursor.next(expecting: "'true' or 'false'")
                guard let flag = parseBool(value.text) else {
                    throw MNCError("invalid bias flag '\(value.text)': expected 'true' or 'false'", at: value.location)
                }
                hasBias = flag
            default:
                throw MNCError("unknown linear option '\(option.text)': expected scale, act or bias", at: option.location)
            }
        }
        return .linear(out: out, activation: activation, hasBias: hasBias, location: keyword.location)
    }

    /// Parses a table header line and its rows up to `end`.
    private mutating func parseTable(_ cursor: inout TokenCursor, keyword: SpecToken) throws -> LayerStatement {
        var activation: Activation = keyword.text == "separable" ? .relu : .relu6
        var gate = Activation.hardsigmoid
        while let option = cursor.peek() {
            cursor.advance()
            try cursor.checkFirstUse(of: option)
            switch option.text {
            case "act" where keyword.text != "bneck":
                activation = try parseActivation(&cursor)
            case "gate" where keyword.text == "bneck":
                gate = try parseActivation(&cursor)
            default:
                let expected = keyword.text == "bneck" ? "'gate ACTIVATION' (the squeeze-excitation gate)" : "'act ACTIVATION'"
                throw MNCError("unknown \(keyword.text) option '\(option.text)': expected \(expected)", at: option.location)
            }
        }

        let columns: [String]
        switch keyword.text {
        case "separable": columns = ["c", "n", "s"]
        case "inverted_residual": columns = ["t", "c", "n", "s"]
        default: columns = ["input_c", "kernel", "expanded_c", "out_c", "use_se", "activation", "stride"]
        }
        let form = columns.joined(separator: " ")

        var separableRows: [SeparableRow] = []
        var invertedRows: [InvertedResidualRow] = []
        var bottleneckRows: [BottleneckRow] = []
        var closed = false
        while index < lines.count {
            let line = lines[index]
            index += 1
            if line.tokens[0].text == "end" {
                var endCursor = TokenCursor(line: line, file: file)
                endCursor.advance()
                try endCursor.end()
                closed = true
                break
            }
            guard line.tokens.count == columns.count else {
                let first = line.tokens[0]
                guard Double(first.text) != nil else {
                    throw MNCError("expected a \(keyword.text) row '\(form)' or 'end', found '\(first.text)'", at: first.location)
                }
                let article = keyword.text.first.map { "aeiou".contains($0) } == true ? "an" : "a"
                throw MNCError("\(article) \(keyword.text) row has \(columns.count) columns '\(form)', found \(line.tokens.count)",
                               at: first.location)
            }
            var row = TokenCursor(line: line, file: file)
            let location = line.tokens[0].location
            switch keyword.text {
            case "separable":
                separableRows.append(SeparableRow(
                    channels: try row.integer(in: 1...100_000, expecting: "an output channel count c"),
                    repeats: try row.integer(in: 1...100, expecting: "a repeat count n"),
                    stride: try row.stride(),
                    location: location))
            case "inverted_residual":
                invertedRows.append(InvertedResidualRow(
                    expansion: try row.number(expecting: "an expansion ratio t in [1, 64]", valid: { $0 >= 1 && $0 <= 64 }),
                    channels: try row.integer(in: 1...100_000, expecting: "an output channel count c"),
                    repeats: try row.integer(in: 1...100, expecting: "a repeat count n"),
                    stride: try row.stride(),
                    location: location))
            default:
                let inputChannels = try row.integer(in: 1...100_000, expecting: "an input channel count input_c")
                let kernelToken = try row.next(expecting: "a kernel size")
                guard let kernel = Int(kernelToken.text), [3, 5, 7].contains(kernel) else {
                    throw MNCError("invalid kernel '\(kernelToken.text)': expected 3, 5 or 7", at: kernelToken.location)
                }
                let expanded = try row.integer(in: 1...100_000, expecting: "an expanded channel count expanded_c")
                let out = try row.integer(in: 1...100_000, expecting: "an output channel count out_c")
                let seToken = try row.next(expecting: "use_se (True or False)")
                guard let useSE = parseBool(seToken.text) else {
                    throw MNCError("invalid use_se '\(seToken.text)': expected True or False", at: seToken.location)
                }
                let activation = try parseActivation(&row)
                guard activation != .identity else {
                    throw MNCError("a bneck row needs an activation (RE or HS)", at: location)
                }
                let stride = try row.stride()
                bottleneckRows.append(BottleneckRow(inputChannels: inputChannels, kernel: kernel,
                                                    expandedChannels: expanded, outChannels: out,
                                                    useSqueezeExcite: useSE, activation: activation,
                                                    stride: stride, location: location))
            }
        }
        guard closed else {
            throw MNCError("the \(keyword.text) table has no 'end' line", at: keyword.location)
        }
        switch keyword.text {
        case "separable":
            guard !separableRows.isEmpty else { throw MNCError("the separable table has no rows '\(form)'", at: keyword.location) }
            return .separable(activation: activation, rows: separableRows, location: keyword.location)
        case "inverted_residual":
            guard !invertedRows.isEmpty else { throw MNCError("the inverted_residual table has no rows '\(form)'", at: keyword.location) }
            return .invertedResidual(activation: activation, rows: invertedRows, location: keyword.location)
        default:
            guard !bottleneckRows.isEmpty else { throw MNCError("the bneck table has no rows '\(form)'", at: keyword.location) }
            return .bottleneck(squeezeGate: gate, rows: bottleneckRows, location: keyword.location)
        }
    }
}

private func parseBool(_ text: String) -> Bool? {
    switch text {
    case "True", "true", "1", "yes": return true
    case "False", "false", "0", "no": return false
    default: return nil
    }
}

private func isIdentifier(_ text: String) -> Bool {
    guard let first = text.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII else { return false }
    return text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_") }
}

/// Reads the tokens of one line left to right, with errors that name the token found.
struct TokenCursor {
    let line: SpecLine
    let file: String
    var position = 0

    init(line: SpecLine, file: String) {
        self.line = line
        self.file = file
    }

    /// Option keywords already read on this line, to reject one given twice.
    private var usedOptions: [String: SourceLocation] = [:]

    /// Rejects an option keyword that already appeared on this line.
    mutating func checkFirstUse(of option: SpecToken) throws {
        if let first = usedOptions[option.text] {
            throw MNCError("duplicate option '\(option.text)': it is already given at column \(first.column); give it once",
                           at: option.location)
        }
        usedOptions[option.text] = option.location
    }

    func peek() -> SpecToken? {
        position < line.tokens.count ? line.tokens[position] : nil
    }

    mutating func advance() {
        position += 1
    }

    private var endLocation: SourceLocation {
        let last = line.tokens[line.tokens.count - 1]
        return SourceLocation(file: file, line: last.location.line, column: last.location.column + last.text.count)
    }

    mutating func next(expecting form: String) throws -> SpecToken {
        guard let token = peek() else {
            throw MNCError("expected \(form), found the end of the line", at: endLocation)
        }
        position += 1
        return token
    }

    mutating func end() throws {
        if let token = peek() {
            throw MNCError("unexpected '\(token.text)': expected the end of the line", at: token.location)
        }
    }

    mutating func expectKeyword(_ keyword: String) throws {
        let token = try next(expecting: "'\(keyword)'")
        guard token.text == keyword else {
            throw MNCError("expected '\(keyword)', found '\(token.text)'", at: token.location)
        }
    }

    mutating func integer(in range: ClosedRange<Int>, expecting form: String) throws -> Int {
        let token = try next(expecting: form)
        guard let value = Int(token.text) else {
            throw MNCError("expected \(form), found '\(token.text)'", at: token.location)
        }
        guard range.contains(value) else {
            throw MNCError("invalid value '\(token.text)': expected \(form) in \(range.lowerBound)...\(range.upperBound)",
                           at: token.location)
        }
        return value
    }

    mutating func number(expecting form: String, valid: (Double) -> Bool) throws -> Double {
        let token = try next(expecting: form)
        guard let value = Double(token.text), value.isFinite else {
            throw MNCError("expected \(form), found '\(token.text)'", at: token.location)
        }
        guard valid(value) else {
            throw MNCError("invalid value '\(token.text)': expected \(form)", at: token.location)
        }
        return value
    }

    mutating func stride() throws -> Int {
        let token = try next(expecting: "a stride (1 or 2)")
        guard let value = Int(token.text), value == 1 || value == 2 else {
            throw MNCError("invalid stride '\(token.text)': expected 1 or 2", at: token.location)
        }
        return value
    }
}
