/// A reader for the protocol buffers wire format.
///
/// A message is a sequence of fields, each a varint key `(field number << 3) | wire type`
/// followed by a varint (type 0), 8 bytes (type 1), a varint length and that many bytes
/// (type 2), or 4 bytes (type 5). Varints are at most 10 bytes, and every length is checked
/// against the bytes that remain in the enclosing message. Messages nested deeper than
/// `maxDepth` are rejected. A corrupt file therefore raises an `MNCError` naming the field path
/// and the byte offset instead of reading out of range or recursing without bound.
struct ProtobufReader {
    let bytes: [UInt8]
    /// The file path and format name that error messages start with.
    let file: String
    let format: String
    /// ONNX models nest Model → Graph → Node → Attribute → Graph → ...; 64 levels leave room
    /// for control-flow subgraphs several levels deep.
    static let maxDepth = 64

    func error(_ message: String) -> MNCError {
        MNCError("\(file): invalid \(format) file: \(message)")
    }

    /// Returns the whole file as the top-level message.
    func root(name: String) -> ProtobufMessage {
        ProtobufMessage(reader: self, range: 0..<bytes.count, path: name, depth: 0)
    }

    /// Decodes the varint at `offset`, which must end before `end`; returns the value and the
    /// offset after it.
    func varint(at offset: Int, end: Int, _ what: @autoclosure () -> String) throws -> (UInt64, Int) {
        var value: UInt64 = 0
        var position = offset
        for index in 0..<10 {
            guard position < end else {
                throw error("\(what()): the varint at offset \(offset) is truncated")
            }
            let byte = bytes[position]
            position += 1
            if index == 9 {
                // The tenth byte must end the varint and holds only bit 63.
                guard byte & 0x80 == 0 else {
                    throw error("\(what()): the varint at offset \(offset) does not end within 10 bytes")
                }
                guard byte <= 1 else {
                    throw error("\(what()): the varint at offset \(offset) does not fit in 64 bits")
                }
            }
            value |= UInt64(byte & 0x7F) << (7 * UInt64(index))
            if byte & 0x80 == 0 {
                break
            }
        }
        return (value, position)
    }
}

/// One field value as stored on the wire.
enum ProtobufValue {
    case varint(UInt64)
    case fixed64(UInt64)
    /// The bytes of a length-delimited field (string, bytes, message or packed repeated field).
    case lengthDelimited(Range<Int>)
    case fixed32(UInt32)

    var wireType: Int {
        switch self {
        case .varint: return 0
        case .fixed64: return 1
        case .lengthDelimited: return 2
        case .fixed32: return 5
        }
    }
}

/// A message: a byte range of the file, its schema path for error messages and its nesting depth.
struct ProtobufMessage {
    let reader: ProtobufReader
    let range: Range<Int>
    /// e.g. `ModelProto.graph.node[3].attribute[0]`.
    let path: String
    let depth: Int

    /// Calls `body` with each field number and value in file order.
    func forEachField(_ body: (Int, ProtobufValue) throws -> Void) throws {
        var position = range.lowerBound
        let end = range.upperBound
        while position < end {
            let keyOffset = position
            let (key, afterKey) = try reader.varint(at: position, end: end, "\(path): field key")
            position = afterKey
            let wireType = Int(key & 7)
            let number = key >> 3
            guard number >= 1, number <= 0x1FFF_FFFF else {
                throw reader.error("\(path): invalid field number \(number) at offset \(keyOffset)")
            }
            let field = Int(number)
            let value: ProtobufValue
            switch wireType {
            case 0:
                let (decoded, next) = try reader.varint(at: position, end: end, "\(path): field \(field)")
                value = .varint(decoded)
                position = next
            case 1:
                guard end - position >= 8 else {
                    throw reader.error("\(path): field \(field): 8-byte value at offset \(position) extends past the end of its message at \(end)")
                }
                value = .fixed64(littleEndian(UInt64.self, at: position))
                position += 8
            case 2:
                let (length, next) = try reader.varint(at: position, end: end, "\(path): field \(field) length")
                guard length <= UInt64(end - next) else {
                    throw reader.error("\(path): field \(field) at offset \(keyOffset) declares \(length) bytes, but only \(end - next) remain in its message")
                }
                value = .lengthDelimited(next..<(next + Int(length)))
                position = next + Int(length)
            case 5:
                guard end - position >= 4 else {
                    throw reader.error("\(path): field \(field): 4-byte value at offset \(position) extends past the end of its message at \(end)")
                }
                value = .fixed32(littleEndian(UInt32.self, at: position))
                position += 4
            default:
                throw reader.error("\(path): field \(field) at offset \(keyOffset) has wire type \(wireType), which is not valid (groups, types 3 and 4, are not read)")
            }
            try body(field, value)
        }
    }

    private func littleEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size {
            value |= T(truncatingIfNeeded: reader.bytes[offset + index]) << (8 * index)
        }
        return value
    }

    func wrongType(_ name: String, _ value: ProtobufValue, expected: Int) -> MNCError {
        reader.error("\(path).\(name): wire type \(value.wireType), expected \(expected)")
    }

    /// Returns the nested message in a length-delimited field, one level deeper.
    func message(_ value: ProtobufValue, _ name: String) throws -> ProtobufMessage {
        guard case .lengthDelimited(let bytes) = value else { throw wrongType(name, value, expected: 2) }
        guard depth < ProtobufReader.maxDepth else {
            throw reader.error("\(path).\(name): messages are nested deeper than \(ProtobufReader.maxDepth) levels")
        }
        return ProtobufMessage(reader: reader, range: bytes, path: "\(path).\(name)", depth: depth + 1)
    }

    func string(_ value: ProtobufValue, _ name: String) throws -> String {
        guard case .lengthDelimited(let bytes) = value else { throw wrongType(name, value, expected: 2) }
        return String(decoding: reader.bytes[bytes], as: UTF8.self)
    }

    func byteRange(_ value: ProtobufValue, _ name: String) throws -> Range<Int> {
        guard case .lengthDelimited(let bytes) = value else { throw wrongType(name, value, expected: 2) }
        return bytes
    }

    func int64(_ value: ProtobufValue, _ name: String) throws -> Int64 {
        guard case .varint(let raw) = value else { throw wrongType(name, value, expected: 0) }
        return Int64(bitPattern: raw)
    }

    func float(_ value: ProtobufValue, _ name: String) throws -> Float {
        guard case .fixed32(let raw) = value else { throw wrongType(name, value, expected: 5) }
        return Float(bitPattern: raw)
    }

    func double(_ value: ProtobufValue, _ name: String) throws -> Double {
        guard case .fixed64(let raw) = value else { throw wrongType(name, value, expected: 1) }
        return Double(bitPattern: raw)
    }

    /// Appends the elements of a repeated varint field, packed (one length-delimited run) or
    /// not (one varint per field occurrence).
    func appendVarints(_ value: ProtobufValue, _ name: String, to list: inout [Int64]) throws {
        switch value {
        case .varint(let raw):
            list.append(Int64(bitPattern: raw))
        case .lengthDelimited(let bytes):
            var position = bytes.lowerBound
            while position < bytes.upperBound {
                let (raw, next) = try reader.varint(at: position, end: bytes.upperBound, "\(path).\(name)[\(list.count)]")
                list.append(Int64(bitPattern: raw))
                position = next
            }
        default:
            throw wrongType(name, value, expected: 0)
        }
    }

    /// Appends the elements of a repeated `float` field, packed or not.
    func appendFloats(_ value: ProtobufValue, _ name: String, to list: inout [Float]) throws {
        switch value {
        case .fixed32(let raw):
            list.append(Float(bitPattern: raw))
        case .lengthDelimited(let bytes):
            guard bytes.count % 4 == 0 else {
                throw reader.error("\(path).\(name): packed floats of \(bytes.count) bytes at offset \(bytes.lowerBound), not a multiple of 4")
            }
            list.reserveCapacity(list.count + bytes.count / 4)
            for offset in stride(from: bytes.lowerBound, to: bytes.upperBound, by: 4) {
                list.append(Float(bitPattern: littleEndian(UInt32.self, at: offset)))
            }
        default:
            throw wrongType(name, value, expected: 5)
        }
    }

    /// Appends the elements of a repeated `double` field, packed or not.
    func appendDoubles(_ value: ProtobufValue, _ name: String, to list: inout [Double]) throws {
        switch value {
        case .fixed64(let raw):
            list.append(Double(bitPattern: raw))
        case .lengthDelimited(let bytes):
            guard bytes.count % 8 == 0 else {
                throw reader.error("\(path).\(name): packed doubles of \(bytes.count) bytes at offset \(bytes.lowerBound), not a multiple of 8")
            }
            for offset in stride(from: bytes.lowerBound, to: bytes.upperBound, by: 8) {
                list.append(Double(bitPattern: littleEndian(UInt64.self, at: offset)))
            }
        default:
            throw wrongType(name, value, expected: 1)
        }
    }
}
