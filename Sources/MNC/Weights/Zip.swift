/// One member of a zip archive, as its central directory record describes it.
struct ZipEntry {
    var name: String
    /// Raw name bytes, compared with the local header's copy.
    var nameBytes: [UInt8]
    /// Compression method: 0 is stored, 8 deflate.
    var method: UInt16
    var flags: UInt16
    var crc32: UInt32
    var compressedSize: Int
    var uncompressedSize: Int
    var localHeaderOffset: Int
}

/// A reader for zip archives with stored (uncompressed) entries, as `torch.save` writes them.
///
/// It reads the end of central directory record (and the zip64 record when a zip64 locator
/// precedes it), then the central directory, whose sizes are authoritative: torch sets general
/// purpose flag bit 3 and writes zeros for the sizes in local headers. The record layouts follow
/// PKWARE's APPNOTE.TXT; the zip64 extra field is its section 4.5.3.
struct ZipArchive {
    let reader: ByteReader
    let entries: [ZipEntry]
    private let entryIndexByName: [String: Int]
    /// Offset of the central directory; entry data must end before it.
    private let centralDirectoryOffset: Int

    private static let localHeaderSignature: UInt32 = 0x0403_4B50
    private static let centralHeaderSignature: UInt32 = 0x0201_4B50
    private static let endRecordSignature: UInt32 = 0x0605_4B50
    private static let zip64EndRecordSignature: UInt32 = 0x0606_4B50
    private static let zip64LocatorSignature: UInt32 = 0x0706_4B50
    private static let endRecordSize = 22
    private static let centralHeaderSize = 46

    init(reader: ByteReader) throws {
        self.reader = reader
        let endOffset = try Self.findEndRecord(reader)

        let diskNumber = try reader.uint16(at: endOffset + 4, field: "end of central directory record")
        let centralDirectoryDisk = try reader.uint16(at: endOffset + 6, field: "end of central directory record")
        var entryCount = Int(try reader.uint16(at: endOffset + 10, field: "end of central directory record"))
        var directorySize = Int(try reader.uint32(at: endOffset + 12, field: "end of central directory record"))
        var directoryOffset = Int(try reader.uint32(at: endOffset + 16, field: "end of central directory record"))
        guard diskNumber == 0, centralDirectoryDisk == 0 else {
            throw reader.error("multi-volume zip archives are not supported (disk \(diskNumber))")
        }
        // The central directory ends where the zip64 end record or the classic end record starts.
        var directoryLimit = endOffset

        let locatorOffset = endOffset - 20
        if locatorOffset >= 0, try reader.uint32(at: locatorOffset, field: "zip64 locator") == Self.zip64LocatorSignature {
            let zip64Offset = try reader.int64AsSize(at: locatorOffset + 8, field: "zip64 end record offset")
            guard zip64Offset <= locatorOffset - 56,
                  try reader.uint32(at: zip64Offset, field: "zip64 end of central directory record") == Self.zip64EndRecordSignature else {
                throw reader.error("zip64 end of central directory record not found at offset \(zip64Offset)")
            }
            let zip64Disk = try reader.uint32(at: zip64Offset + 16, field: "zip64 end record")
            let zip64DirectoryDisk = try reader.uint32(at: zip64Offset + 20, field: "zip64 end record")
            guard zip64Disk == 0, zip64DirectoryDisk == 0 else {
                throw reader.error("multi-volume zip archives are not supported (disk \(zip64Disk))")
            }
            entryCount = try reader.int64AsSize(at: zip64Offset + 32, field: "zip64 entry count")
            directorySize = try reader.int64AsSize(at: zip64Offset + 40, field: "zip64 central directory size")
            directoryOffset = try reader.int64AsSize(at: zip64Offset + 48, field: "zip64 central directory offset")
            directoryLimit = zip64Offset
        } else if entryCount == 0xFFFF || directorySize == 0xFFFF_FFFF || directoryOffset == 0xFFFF_FFFF {
            throw reader.error("zip end record needs zip64 fields, but the zip64 locator is missing at offset \(locatorOffset)")
        }

        guard directoryOffset <= directoryLimit, directorySize <= directoryLimit - directoryOffset else {
            throw reader.error("zip central directory at offset \(directoryOffset) with size \(directorySize) runs past its end record at offset \(directoryLimit)")
        }
        guard entryCount <= directorySize / Self.centralHeaderSize else {
            throw reader.error("zip end record declares \(entryCount) entries, more than a \(directorySize)-byte central directory can hold")
        }

        var entries: [ZipEntry] = []
        var indexByName: [String: Int] = [:]
        var position = directoryOffset
        let directoryEnd = directoryOffset + directorySize
        for entryNumber in 0..<entryCount {
            let (entry, recordSize) = try Self.readCentralHeader(reader, at: position, limit: directoryEnd, entryNumber: entryNumber)
            guard indexByName[entry.name] == nil else {
                throw reader.error("duplicate zip entry '\(entry.name)' in the central directory")
            }
            indexByName[entry.name] = entries.count
            entries.append(entry)
            position += recordSize
        }

        self.entries = entries
        self.entryIndexByName = indexByName
        self.centralDirectoryOffset = directoryOffset
    }

    func entry(named name: String) -> ZipEntry? {
        entryIndexByName[name].map { entries[$0] }
    }

    /// Returns the file range holding a stored entry's data, after checking its local header and CRC-32.
    func dataRange(of entry: ZipEntry) throws -> Range<Int> {
        let subject = "zip entry '\(entry.name)'"
        guard entry.flags & 0x0001 == 0 else {
            throw reader.error("\(subject) is encrypted")
        }
        guard entry.method == 0 else {
            throw reader.error("\(subject) uses compression method \(entry.method) (\(Self.methodName(entry.method))); only stored (uncompressed) entries are supported, as torch.save writes them")
        }
        guard entry.compressedSize == entry.uncompressedSize else {
            throw reader.error("\(subject) is stored but its compressed size \(entry.compressedSize) differs from its size \(entry.uncompressedSize)")
        }

        let headerOffset = entry.localHeaderOffset
        guard try reader.uint32(at: headerOffset, field: "\(subject) local header") == Self.localHeaderSignature else {
            throw reader.error("\(subject): no local file header at offset \(headerOffset)")
        }
        let nameLength = Int(try reader.uint16(at: headerOffset + 26, field: "\(subject) local header"))
        let extraLength = Int(try reader.uint16(at: headerOffset + 28, field: "\(subject) local header"))
        let localName = try reader.slice(offset: headerOffset + 30, count: nameLength, field: "\(subject) local header name")
        guard localName.elementsEqual(entry.nameBytes) else {
            throw reader.error("\(subject): local header at offset \(headerOffset) names '\(String(decoding: localName, as: UTF8.self))' instead")
        }

        let dataStart = headerOffset + 30 + nameLength + extraLength
        guard dataStart <= centralDirectoryOffset, entry.compressedSize <= centralDirectoryOffset - dataStart else {
            throw reader.error("\(subject): \(entry.compressedSize) bytes of data at offset \(dataStart) run past the central directory at offset \(centralDirectoryOffset)")
        }
        let range = dataStart..<(dataStart + entry.compressedSize)
        let checksum = Self.crc32(reader.bytes[range])
        guard checksum == entry.crc32 else {
            throw reader.error("\(subject): CRC-32 mismatch (stored \(hex(entry.crc32)), computed \(hex(checksum))); the file is corrupt")
        }
        return range
    }

    private static func findEndRecord(_ reader: ByteReader) throws -> Int {
        guard reader.count >= endRecordSize else {
            throw reader.error("truncated zip archive: \(reader.count) bytes, smaller than the \(endRecordSize)-byte end of central directory record")
        }
        // The record is the last thing in the file, followed only by a comment of at most 65535 bytes.
        let lowest = max(0, reader.count - endRecordSize - 0xFFFF)
        var offset = reader.count - endRecordSize
        let signature: [UInt8] = [0x50, 0x4B, 0x05, 0x06]
        while offset >= lowest {
            if reader.bytes[offset..<(offset + 4)].elementsEqual(signature) {
                let commentLength = Int(try reader.uint16(at: offset + 20, field: "zip comment length"))
                if commentLength <= reader.count - endRecordSize - offset {
                    return offset
                }
            }
            offset -= 1
        }
        throw reader.error("zip end of central directory record not found; the archive is truncated or not a zip file")
    }

    /// Reads one central directory header and returns the entry and the header's size in bytes.
    private static func readCentralHeader(_ reader: ByteReader, at position: Int, limit: Int, entryNumber: Int) throws -> (ZipEntry, Int) {
        let subject = "central directory entry \(entryNumber) at offset \(position)"
        guard position <= limit - centralHeaderSize else {
            throw reader.error("\(subject) runs past the end of the central directory")
        }
        guard try reader.uint32(at: position, field: subject) == centralHeaderSignature else {
            throw reader.error("\(subject) has no central directory signature")
        }
        let flags = try reader.uint16(at: position + 8, field: subject)
        let method = try reader.uint16(at: position + 10, field: subject)
        let crc = try reader.uint32(at: position + 16, field: subject)
        var compressedSize = Int(try reader.uint32(at: position + 20, field: subject))
        var uncompressedSize = Int(try reader.uint32(at: position + 24, field: subject))
        let nameLength = Int(try reader.uint16(at: position + 28, field: subject))
        let extraLength = Int(try reader.uint16(at: position + 30, field: subject))
        let commentLength = Int(try reader.uint16(at: position + 32, field: subject))
        let startDisk = try reader.uint16(at: position + 34, field: subject)
        var localHeaderOffset = Int(try reader.uint32(at: position + 42, field: subject))
        guard nameLength + extraLength + commentLength <= limit - position - centralHeaderSize else {
            throw reader.error("\(subject) runs past the end of the central directory")
        }
        let nameBytes = Array(try reader.slice(offset: position + centralHeaderSize, count: nameLength, field: subject))
        let name = String(decoding: nameBytes, as: UTF8.self)

        // Zip64 extra field (ID 0x0001): 8-byte values for exactly those of uncompressed size,
        // compressed size and local header offset whose 32-bit field is 0xFFFFFFFF, in that order.
        var extraPosition = position + centralHeaderSize + nameLength
        let extraEnd = extraPosition + extraLength
        while extraPosition < extraEnd {
            guard extraEnd - extraPosition >= 4 else {
                throw reader.error("zip entry '\(name)': malformed extra field at offset \(extraPosition)")
            }
            let fieldID = try reader.uint16(at: extraPosition, field: "zip extra field")
            let fieldSize = Int(try reader.uint16(at: extraPosition + 2, field: "zip extra field"))
            let fieldStart = extraPosition + 4
            guard fieldSize <= extraEnd - fieldStart else {
                throw reader.error("zip entry '\(name)': extra field at offset \(extraPosition) runs past the entry's extra data")
            }
            if fieldID == 0x0001 {
                var valuePosition = fieldStart
                func nextValue(_ field: String) throws -> Int {
                    guard valuePosition + 8 <= fieldStart + fieldSize else {
                        throw reader.error("zip entry '\(name)': zip64 extra field lacks the \(field)")
                    }
                    defer { valuePosition += 8 }
                    return try reader.int64AsSize(at: valuePosition, field: "zip64 \(field)")
                }
                if uncompressedSize == 0xFFFF_FFFF { uncompressedSize = try nextValue("uncompressed size") }
                if compressedSize == 0xFFFF_FFFF { compressedSize = try nextValue("compressed size") }
                if localHeaderOffset == 0xFFFF_FFFF { localHeaderOffset = try nextValue("local header offset") }
            }
            extraPosition = fieldStart + fieldSize
        }
        guard startDisk == 0 || startDisk == 0xFFFF else {
            throw reader.error("zip entry '\(name)' starts on disk \(startDisk); multi-volume archives are not supported")
        }

        let entry = ZipEntry(
            name: name, nameBytes: nameBytes, method: method, flags: flags, crc32: crc,
            compressedSize: compressedSize, uncompressedSize: uncompressedSize, localHeaderOffset: localHeaderOffset)
        return (entry, centralHeaderSize + nameLength + extraLength + commentLength)
    }

    private static func methodName(_ method: UInt16) -> String {
        switch method {
        case 1: return "shrink"
        case 6: return "implode"
        case 8: return "deflate"
        case 9: return "deflate64"
        case 12: return "bzip2"
        case 14: return "LZMA"
        case 93: return "zstd"
        case 95: return "xz"
        default: return "unknown"
        }
    }
}

private func hex(_ value: UInt32) -> String {
    "0x" + String(value, radix: 16, uppercase: false)
}

extension ZipArchive {
    /// Computes CRC-32 as zip uses it: reflected polynomial 0xEDB88320, initial value and final XOR 0xFFFFFFFF.
    static func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        bytes.withUnsafeBufferPointer { buffer in
            for byte in buffer {
                crc = crc32Table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
            }
        }
        return crc ^ 0xFFFF_FFFF
    }

    private static let crc32Table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 {
            value = value & 1 == 1 ? (value >> 1) ^ 0xEDB8_8320 : value >> 1
        }
        return value
    }
}
