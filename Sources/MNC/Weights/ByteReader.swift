/// A bounds-checked reader of little-endian integers from a byte array.
///
/// Every read checks its range first and throws an `MNCError` that starts with `context`
/// (usually the file name), so a truncated or corrupt file never traps.
struct ByteReader {
    let bytes: [UInt8]
    /// Message prefix naming the file or the part of it being read, e.g. `weights.pth: archive/data.pkl`.
    let context: String

    init(_ bytes: [UInt8], context: String) {
        self.bytes = bytes
        self.context = context
    }

    var count: Int { bytes.count }

    func error(_ message: String) -> MNCError {
        MNCError("\(context): \(message)")
    }

    /// Throws unless `count` bytes starting at `offset` lie inside the array; `field` names them in the error.
    func checkRange(offset: Int, count: Int, field: String) throws {
        guard offset >= 0, count >= 0, offset <= bytes.count, count <= bytes.count - offset else {
            throw error("truncated: \(field) needs \(count) bytes at offset \(offset), but the data has \(bytes.count) bytes")
        }
    }

    func uint8(at offset: Int, field: String) throws -> UInt8 {
        try checkRange(offset: offset, count: 1, field: field)
        return bytes[offset]
    }

    func uint16(at offset: Int, field: String) throws -> UInt16 {
        UInt16(truncatingIfNeeded: try littleEndianValue(at: offset, size: 2, field: field))
    }

    func uint32(at offset: Int, field: String) throws -> UInt32 {
        UInt32(truncatingIfNeeded: try littleEndianValue(at: offset, size: 4, field: field))
    }

    func uint64(at offset: Int, field: String) throws -> UInt64 {
        try littleEndianValue(at: offset, size: 8, field: field)
    }

    /// Reads a 64-bit field that the caller uses as a size or offset, rejecting values above `Int.max`.
    func int64AsSize(at offset: Int, field: String) throws -> Int {
        let value = try uint64(at: offset, field: field)
        guard value <= UInt64(Int.max) else {
            throw error("\(field) \(value) at offset \(offset) is too large")
        }
        return Int(value)
    }

    func slice(offset: Int, count: Int, field: String) throws -> ArraySlice<UInt8> {
        try checkRange(offset: offset, count: count, field: field)
        return bytes[offset..<(offset + count)]
    }

    private func littleEndianValue(at offset: Int, size: Int, field: String) throws -> UInt64 {
        try checkRange(offset: offset, count: size, field: field)
        var value: UInt64 = 0
        for index in stride(from: size - 1, through: 0, by: -1) {
            value = (value << 8) | UInt64(bytes[offset + index])
        }
        return value
    }
}
