/// Reader for the safetensors format.
///
/// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section.
/// The JSON object maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`,
/// with offsets in bytes relative to the data section, plus an optional `__metadata__` object of
/// strings. Tensors come back in the order of the header's keys.
public enum Safetensors {
    /// Largest accepted JSON header, in bytes; it bounds the memory spent on the header of a corrupt file.
    public static let maxHeaderLength = 100_000_000

    public static func load(path: String) throws -> WeightFile {
        try read(readWeightFileBytes(path: path), path: path)
    }

    /// Parses and validates a whole safetensors file held in memory; `path` names it in errors.
    public static func read(_ bytes: [UInt8], path: String) throws -> WeightFile {
        let reader = ByteReader(bytes, context: path)
        guard bytes.count >= 8 else {
            throw reader.error("truncated safetensors file: \(bytes.count) bytes, but the header length field alone takes 8")
        }
        let declaredLength = try reader.uint64(at: 0, field: "header length")
        guard declaredLength <= UInt64(maxHeaderLength) else {
            throw reader.error("safetensors header length \(declaredLength) exceeds the limit of \(maxHeaderLength) bytes")
        }
        let headerLength = Int(declaredLength)
        guard headerLength <= bytes.count - 8 else {
            throw reader.error("safetensors header length \(headerLength) is larger than the \(bytes.count - 8) bytes after the length field")
        }

        var parser = SafetensorsJSONParser(bytes: Array(bytes[8..<(8 + headerLength)]), fileOffset: 8, context: path)
        let header = try parser.parse()
        guard case .object(let members) = header else {
            throw reader.error("safetensors header is not a JSON object")
        }

        let dataStart = 8 + headerLength
        let dataSize = bytes.count - dataStart
        var entries: [TensorEntry] = []
        for (key, value) in members {
            if key == "__metadata__" {
                try validateMetadata(value, reader: reader)
                continue
            }
            entries.append(try TensorEntry(key: key, value: value, dataSize: dataSize, reader: reader))
        }
        try checkNoOverlap(entries, reader: reader)

        var tensors: [WeightTensor] = []
        tensors.reserveCapacity(entries.count)
        for entry in entries {
            let data = try entry.elementType.decode(
                from: reader, offset: dataStart + entry.begin, count: entry.elementCount,
                bigEndian: false, subject: "tensor '\(entry.name)'")
            tensors.append(WeightTensor(name: entry.name, dtype: entry.dtypeName, shape: entry.shape, data: data))
        }
        return WeightFile(path: path, format: "safetensors", tensors: tensors)
    }

    private static let elementTypes: [String: StoredElementType] = [
        "F32": .float32, "F16": .float16, "BF16": .bfloat16, "F64": .float64, "I64": .int64, "I32": .int32,
    ]

    /// One header entry after validation: its byte range lies inside the data section and matches its shape.
    private struct TensorEntry {
        var name: String
        var dtypeName: String
        var elementType: StoredElementType
        var shape: [Int]
        var elementCount: Int
        var begin: Int
        var end: Int

        init(key: String, value: SafetensorsJSON, dataSize: Int, reader: ByteReader) throws {
            let subject = "tensor '\(key)'"
            guard case .object(let fields) = value else {
                throw reader.error("\(subject): header entry is not a JSON object")
            }
            func field(_ name: String) throws -> SafetensorsJSON {
                guard let found = fields.first(where: { $0.key == name }) else {
                    throw reader.error("\(subject): missing field '\(name)'")
                }
                return found.value
            }

            guard case .string(let dtypeName) = try field("dtype") else {
                throw reader.error("\(subject): field 'dtype' is not a string")
            }
            guard let elementType = Safetensors.elementTypes[dtypeName] else {
                throw reader.error("\(subject): unsupported dtype '\(dtypeName)' (supported: F32, F16, BF16, F64, I64, I32)")
            }

            let shape = try integerArray(try field("shape"), field: "shape", subject: subject, reader: reader)
            var elementCount = 1
            for dimension in shape {
                let (product, overflow) = elementCount.multipliedReportingOverflow(by: dimension)
                guard !overflow else {
                    throw reader.error("\(subject): element count of shape \(shape) overflows a 64-bit integer")
                }
                elementCount = product
            }
            let (byteLength, byteOverflow) = elementCount.multipliedReportingOverflow(by: elementType.byteCount)
            guard !byteOverflow else {
                throw reader.error("\(subject): byte size of shape \(shape) with dtype \(dtypeName) overflows a 64-bit integer")
            }

            let offsets = try integerArray(try field("data_offsets"), field: "data_offsets", subject: subject, reader: reader)
            guard offsets.count == 2 else {
                throw reader.error("\(subject): data_offsets has \(offsets.count) values, expected [begin, end]")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin <= end else {
                throw reader.error("\(subject): data_offsets [\(begin), \(end)] has begin after end")
            }
            guard end <= dataSize else {
                throw reader.error("\(subject): data_offsets [\(begin), \(end)] extend past the \(dataSize)-byte data section")
            }
            guard end - begin == byteLength else {
                throw reader.error("\(subject): data_offsets [\(begin), \(end)] span \(end - begin) bytes, but shape \(shape) of \(dtypeName) needs \(byteLength)")
            }

            self.name = key
            self.dtypeName = dtypeName
            self.elementType = elementType
            self.shape = shape
            self.elementCount = elementCount
            self.begin = begin
            self.end = end
        }
    }

    /// Rejects two tensors whose non-empty byte ranges share a byte.
    private static func checkNoOverlap(_ entries: [TensorEntry], reader: ByteReader) throws {
        let sorted = entries.filter { $0.end > $0.begin }.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for (previous, current) in zip(sorted, sorted.dropFirst()) where current.begin < previous.end {
            throw reader.error("tensors '\(previous.name)' at data_offsets [\(previous.begin), \(previous.end)] and '\(current.name)' at [\(current.begin), \(current.end)] overlap")
        }
    }

    private static func validateMetadata(_ value: SafetensorsJSON, reader: ByteReader) throws {
        guard case .object(let members) = value else {
            throw reader.error("__metadata__ is not a JSON object")
        }
        for (key, member) in members {
            guard case .string = member else {
                throw reader.error("__metadata__ value for '\(key)' is not a string")
            }
        }
    }
}

/// Converts a JSON array of non-negative integer literals; `field` and `subject` name it in errors.
private func integerArray(_ value: SafetensorsJSON, field: String, subject: String, reader: ByteReader) throws -> [Int] {
    guard case .array(let items) = value else {
        throw reader.error("\(subject): field '\(field)' is not an array")
    }
    return try items.map { item in
        guard case .number(let literal) = item else {
            throw reader.error("\(subject): field '\(field)' contains a non-number")
        }
        guard !literal.hasPrefix("-") else {
            throw reader.error("\(subject): field '\(field)' contains negative value \(literal)")
        }
        guard literal.allSatisfy(\.isASCIIDigit) else {
            throw reader.error("\(subject): field '\(field)' contains non-integer value \(literal)")
        }
        guard let number = Int(literal) else {
            throw reader.error("\(subject): field '\(field)' value \(literal) is too large")
        }
        return number
    }
}

private extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

/// A parsed JSON value whose objects keep their members in file order.
enum SafetensorsJSON {
    case object([(key: String, value: SafetensorsJSON)])
    case array([SafetensorsJSON])
    case string(String)
    /// The number's literal text, validated against the JSON number grammar.
    case number(String)
    case bool(Bool)
    case null
}

/// A strict JSON (RFC 8259) parser that rejects duplicate object keys.
///
/// Foundation's JSONSerialization keeps only one of two equal keys and loses member order,
/// so safetensors headers are parsed here. Nesting deeper than `maxDepth` is rejected, which bounds recursion.
struct SafetensorsJSONParser {
    static let maxDepth = 64

    private let bytes: [UInt8]
    /// Offset of `bytes[0]` in the file, so errors give file offsets.
    private let fileOffset: Int
    private let context: String
    private var position = 0

    init(bytes: [UInt8], fileOffset: Int, context: String) {
        self.bytes = bytes
        self.fileOffset = fileOffset
        self.context = context
    }

    mutating func parse() throws -> SafetensorsJSON {
        skipWhitespace()
        let value = try parseValue(depth: 0)
        skipWhitespace()
        guard position == bytes.count else {
            throw error("unexpected content after the JSON value")
        }
        return value
    }

    private func error(_ reason: String) -> MNCError {
        MNCError("\(context): invalid JSON header at offset \(fileOffset + position): \(reason)")
    }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func skipWhitespace() {
        while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D {
            position += 1
        }
    }

    private mutating func expect(_ byte: UInt8, _ description: String) throws {
        guard current == byte else {
            throw error(current == nil ? "unexpected end, expected \(description)" : "expected \(description)")
        }
        position += 1
    }

    private mutating func parseValue(depth: Int) throws -> SafetensorsJSON {
        guard depth < Self.maxDepth else {
            throw error("nesting deeper than \(Self.maxDepth) levels")
        }
        guard let byte = current else {
            throw error("unexpected end, expected a value")
        }
        switch byte {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try parseLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try parseLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try parseLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected character '\(Character(Unicode.Scalar(byte)))'")
        }
    }

    private mutating func parseObject(depth: Int) throws -> SafetensorsJSON {
        position += 1
        var members: [(key: String, value: SafetensorsJSON)] = []
        var seenKeys = Set<String>()
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            let keyOffset = position
            guard current == UInt8(ascii: "\"") else {
                throw error("expected a string key")
            }
            let key = try parseString()
            guard seenKeys.insert(key).inserted else {
                position = keyOffset
                throw error("duplicate key '\(key)'")
            }
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "':'")
            skipWhitespace()
            members.append((key, try parseValue(depth: depth + 1)))
            skipWhitespace()
            if current == UInt8(ascii: ",") {
                position += 1
                continue
            }
            try expect(UInt8(ascii: "}"), "',' or '}'")
            return .object(members)
        }
    }

    private mutating func parseArray(depth: Int) throws -> SafetensorsJSON {
        position += 1
        var items: [SafetensorsJSON] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            position += 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth + 1))
            skipWhitespace()
            if current == UInt8(ascii: ",") {
                position += 1
                continue
            }
            try expect(UInt8(ascii: "]"), "',' or ']'")
            return .array(items)
        }
    }

    private mutating func parseLiteral(_ word: String) throws {
        for expected in word.utf8 {
            guard current == expected else {
                throw error("invalid literal, expected '\(word)'")
            }
            position += 1
        }
    }

    /// Parses `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` and returns its text.
    private mutating func parseNumber() throws -> String {
        let start = position
        if current == UInt8(ascii: "-") { position += 1 }
        if current == UInt8(ascii: "0") {
            position += 1
        } else {
            guard skipDigits() > 0 else { throw error("invalid number") }
        }
        if current == UInt8(ascii: ".") {
            position += 1
            guard skipDigits() > 0 else { throw error("invalid number: no digits after '.'") }
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            position += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
            guard skipDigits() > 0 else { throw error("invalid number: no digits in the exponent") }
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    private mutating func skipDigits() -> Int {
        var count = 0
        while let byte = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
            position += 1
            count += 1
        }
        return count
    }

    private mutating func parseString() throws -> String {
        let start = position
        position += 1
        var utf8: [UInt8] = []
        while true {
            guard let byte = current else {
                position = start
                throw error("unterminated string")
            }
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let string = String(validating: utf8, as: UTF8.self) else {
                    position = start
                    throw error("string is not valid UTF-8")
                }
                return string
            case UInt8(ascii: "\\"):
                try appendEscape(to: &utf8)
            case 0x00..<0x20:
                position -= 1
                throw error("unescaped control character in string")
            default:
                utf8.append(byte)
            }
        }
    }

    private mutating func appendEscape(to utf8: inout [UInt8]) throws {
        guard let byte = current else {
            throw error("unterminated escape sequence")
        }
        position += 1
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(byte)
        case UInt8(ascii: "b"): utf8.append(0x08)
        case UInt8(ascii: "f"): utf8.append(0x0C)
        case UInt8(ascii: "n"): utf8.append(0x0A)
        case UInt8(ascii: "r"): utf8.append(0x0D)
        case UInt8(ascii: "t"): utf8.append(0x09)
        case UInt8(ascii: "u"):
            var codePoint = try parseHexQuad()
            if (0xD800...0xDBFF).contains(codePoint) {
                // A high surrogate must be followed by an escaped low surrogate.
                guard current == UInt8(ascii: "\\"), position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: "u") else {
                    throw error("unpaired UTF-16 surrogate in \\u escape")
                }
                position += 2
                let low = try parseHexQuad()
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw error("unpaired UTF-16 surrogate in \\u escape")
                }
                codePoint = 0x10000 + ((codePoint - 0xD800) << 10) + (low - 0xDC00)
            }
            guard let scalar = Unicode.Scalar(codePoint) else {
                throw error("unpaired UTF-16 surrogate in \\u escape")
            }
            utf8.append(contentsOf: String(Character(scalar)).utf8)
        default:
            throw error("invalid escape sequence '\\\(Character(Unicode.Scalar(byte)))'")
        }
    }

    private mutating func parseHexQuad() throws -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = current, let digit = Character(Unicode.Scalar(byte)).hexDigitValue else {
                throw error("invalid \\u escape, expected 4 hex digits")
            }
            value = value * 16 + UInt32(digit)
            position += 1
        }
        return value
    }
}
