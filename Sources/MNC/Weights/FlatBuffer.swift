/// A bounds-checked reader for the FlatBuffers binary format (little-endian).
///
/// Every table starts with a signed 32-bit offset back to its vtable. A vtable is
/// `[vtable size: u16, object size: u16, field offsets: u16...]`, where field offset 0 marks an
/// absent field. References between objects are unsigned 32-bit offsets relative to the position
/// they are stored at, and a vector is a `u32` element count followed by the elements.
/// Every offset, vtable and vector length is checked against the file before it is read, so a
/// corrupt file raises an `MNCError` naming the field and the byte offset. Callers descend by a
/// fixed schema, so the nesting depth is bounded by the schema whatever the offsets point to.
struct FlatBufferReader {
    let bytes: [UInt8]
    /// The file path and format name that error messages start with.
    let file: String
    let format: String

    func error(_ message: String) -> MNCError {
        MNCError("\(file): invalid \(format) file: \(message)")
    }

    /// Reads a little-endian integer at `offset`; `what` names the field in the error.
    func integer<T: FixedWidthInteger>(_ type: T.Type, at offset: Int, _ what: @autoclosure () -> String) throws -> T {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= bytes.count - size else {
            throw error("\(what()): \(size)-byte value at offset \(offset) lies past the end of the file (\(bytes.count) bytes)")
        }
        var value: T = 0
        for index in 0..<size {
            value |= T(truncatingIfNeeded: bytes[offset + index]) << (8 * index)
        }
        return value
    }

    func float32(at offset: Int, _ what: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try integer(UInt32.self, at: offset, what()))
    }

    /// Follows the unsigned offset stored at `position` and returns the absolute target.
    func follow(_ position: Int, _ what: @autoclosure () -> String) throws -> Int {
        let relative = Int(try integer(UInt32.self, at: position, what()))
        let target = position + relative
        guard target < bytes.count else {
            throw error("\(what()): offset \(relative) at \(position) points to \(target), past the end of the file (\(bytes.count) bytes)")
        }
        return target
    }

    /// Returns the root table, which the `u32` at byte 0 points to, after checking the 4-byte
    /// file identifier at byte 4.
    func rootTable(identifier: String, name: String) throws -> FlatBufferTable {
        guard bytes.count >= 8 else {
            throw error("the file is \(bytes.count) bytes, too short for a FlatBuffer header (8 bytes)")
        }
        let found = bytes[4..<8]
        guard Array(found) == Array(identifier.utf8) else {
            let shown = String(decoding: found.map { (32...126).contains($0) ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
            throw error("the file identifier is '\(shown)', expected '\(identifier)'")
        }
        return try table(at: try follow(0, "root table offset"), path: name)
    }

    /// Returns the table whose first byte is at `position`, after checking its vtable.
    func table(at position: Int, path: String) throws -> FlatBufferTable {
        let vtableDistance = Int(try integer(Int32.self, at: position, "\(path): vtable offset"))
        let vtable = position - vtableDistance
        guard vtable >= 0, vtable <= bytes.count - 4 else {
            throw error("\(path): the table at offset \(position) has its vtable at \(vtable), outside the file (\(bytes.count) bytes)")
        }
        let vtableSize = Int(try integer(UInt16.self, at: vtable, "\(path): vtable size"))
        let objectSize = Int(try integer(UInt16.self, at: vtable + 2, "\(path): object size"))
        guard vtableSize >= 4, vtable + vtableSize <= bytes.count else {
            throw error("\(path): the vtable at offset \(vtable) declares \(vtableSize) bytes, which do not fit in the file (\(bytes.count) bytes)")
        }
        guard objectSize >= 4, position + objectSize <= bytes.count else {
            throw error("\(path): the table at offset \(position) declares \(objectSize) bytes, which do not fit in the file (\(bytes.count) bytes)")
        }
        return FlatBufferTable(reader: self, position: position, vtable: vtable, vtableSize: vtableSize,
                               objectSize: objectSize, path: path)
    }
}

/// A table whose vtable and object extent lie inside the file.
struct FlatBufferTable {
    let reader: FlatBufferReader
    let position: Int
    let vtable: Int
    let vtableSize: Int
    let objectSize: Int
    /// The schema path of this table, e.g. `Model.subgraphs[0].tensors[3]`.
    let path: String

    /// Returns the absolute position of field `id` (schema order, counting union type fields),
    /// or nil when the field is absent. Throws when the field would extend past its table.
    func fieldPosition(_ id: Int, size: Int, _ name: String) throws -> Int? {
        let entry = 4 + 2 * id
        guard entry + 2 <= vtableSize else { return nil }
        let offset = Int(try reader.integer(UInt16.self, at: vtable + entry, "\(path).\(name): vtable entry"))
        if offset == 0 { return nil }
        guard offset + size <= objectSize else {
            throw reader.error("\(path).\(name): field at offset \(offset) of \(size) bytes lies outside its table of \(objectSize) bytes at offset \(position)")
        }
        return position + offset
    }

    func scalar<T: FixedWidthInteger>(_ id: Int, _ name: String, default value: T) throws -> T {
        guard let at = try fieldPosition(id, size: MemoryLayout<T>.size, name) else { return value }
        return try reader.integer(T.self, at: at, "\(path).\(name)")
    }

    func table(_ id: Int, _ name: String) throws -> FlatBufferTable? {
        guard let at = try fieldPosition(id, size: 4, name) else { return nil }
        return try reader.table(at: try reader.follow(at, "\(path).\(name)"), path: "\(path).\(name)")
    }

    /// Returns a vector field after checking that its `count × elementSize` bytes lie inside the file.
    func vector(_ id: Int, _ name: String, elementSize: Int) throws -> FlatBufferVector? {
        guard let at = try fieldPosition(id, size: 4, name) else { return nil }
        let fieldPath = "\(path).\(name)"
        let start = try reader.follow(at, fieldPath)
        let count = Int(try reader.integer(UInt32.self, at: start, "\(fieldPath): vector length"))
        let (byteCount, overflow) = count.multipliedReportingOverflow(by: elementSize)
        let available = reader.bytes.count - (start + 4)
        guard !overflow, byteCount <= available else {
            throw reader.error("\(fieldPath): vector of \(count) elements of \(elementSize) bytes at offset \(start) extends past the end of the file (\(reader.bytes.count) bytes)")
        }
        return FlatBufferVector(reader: reader, start: start + 4, count: count, elementSize: elementSize, path: fieldPath)
    }

    func string(_ id: Int, _ name: String) throws -> String? {
        guard let vector = try vector(id, name, elementSize: 1) else { return nil }
        return String(decoding: reader.bytes[vector.byteRange], as: UTF8.self)
    }

    /// Returns the elements of an `[int]` field, or an empty array when the field is absent.
    func int32s(_ id: Int, _ name: String) throws -> [Int] {
        guard let vector = try vector(id, name, elementSize: 4) else { return [] }
        return try (0..<vector.count).map { Int(try vector.integer(Int32.self, at: $0)) }
    }
}

/// A vector whose elements lie inside the file.
struct FlatBufferVector {
    let reader: FlatBufferReader
    /// The position of element 0.
    let start: Int
    let count: Int
    let elementSize: Int
    let path: String

    var byteRange: Range<Int> { start..<(start + count * elementSize) }

    func integer<T: FixedWidthInteger>(_ type: T.Type, at index: Int) throws -> T {
        try reader.integer(T.self, at: start + index * elementSize, "\(path)[\(index)]")
    }

    func float32(at index: Int) throws -> Float {
        try reader.float32(at: start + index * elementSize, "\(path)[\(index)]")
    }

    /// Element `index` of a vector of tables.
    func table(at index: Int) throws -> FlatBufferTable {
        let elementPath = "\(path)[\(index)]"
        return try reader.table(at: try reader.follow(start + index * elementSize, elementPath), path: elementPath)
    }
}
