import Foundation
import XCTest

/// Builders for small safetensors files and `torch.save`-style zip checkpoints, written byte by
/// byte from the formats' specifications so that the readers are tested against independent bytes.
enum WeightFixtures {
    // MARK: - Shared data

    /// Returns the shared reference data folder `../shared/data` next to the package root, or skips the test when it is absent.
    static func sharedDataDirectory() throws -> URL {
        let packageRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent()  // MNCTests
            .deletingLastPathComponent()  // Tests
            .deletingLastPathComponent()
        let directory = packageRoot.appendingPathComponent("../shared/data").standardizedFileURL
        guard FileManager.default.fileExists(atPath: directory.path) else {
            throw XCTSkip("weight reader tests on real checkpoints: ../shared/data not found")
        }
        return directory
    }

    /// Returns the case folders under `data/torch`, sorted by name.
    static func torchCaseDirectories() throws -> [URL] {
        let torch = try sharedDataDirectory().appendingPathComponent("torch")
        let names = try FileManager.default.contentsOfDirectory(atPath: torch.path).sorted()
        return names.map { torch.appendingPathComponent($0) }
    }

    // MARK: - Bytes

    static func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    static func float32Bytes(_ values: [Float], bigEndian useBigEndian: Bool = false) -> [UInt8] {
        values.flatMap { useBigEndian ? bigEndian($0.bitPattern) : littleEndian($0.bitPattern) }
    }

    /// Per-process folder for files the weight tests write; `removeTemporaryFiles` deletes it.
    private static let temporaryDirectory = FileManager.default.temporaryDirectory
        .appendingPathComponent("mnc-weight-tests-\(ProcessInfo.processInfo.processIdentifier)")

    static func writeTemporaryFile(_ bytes: [UInt8], name: String) throws -> String {
        let directory = temporaryDirectory
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }

    static func removeTemporaryFiles() {
        try? FileManager.default.removeItem(at: temporaryDirectory)
    }

    // MARK: - safetensors

    /// Builds a safetensors file: 8-byte little-endian header length, the header text, then the data section.
    static func safetensors(header: String, data: [UInt8]) -> [UInt8] {
        let headerBytes = Array(header.utf8)
        return littleEndian(UInt64(headerBytes.count)) + headerBytes + data
    }

    // MARK: - zip

    struct ZipMember {
        var name: String
        var data: [UInt8]
        var method: UInt16 = 0
        /// CRC-32 written to the central directory in place of the correct one, to simulate corruption.
        var storedCRC: UInt32? = nil
    }

    /// Computes CRC-32 bit by bit (reflected polynomial 0xEDB88320), independently of the reader's table.
    static func referenceCRC32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
            }
        }
        return ~crc
    }

    /// Builds a zip archive laid out as torch.save (miniz) writes it. Local headers have general
    /// purpose flags 0x0808 (data descriptor, UTF-8 names), zero sizes and CRC, and an "FB" padding
    /// extra field that aligns each member's data to 64 bytes. A data descriptor follows the data, and
    /// a zip64 end record with its locator precedes the classic end record.
    ///
    /// `zip64ExtraFields` stores sizes and offsets as 0xFFFFFFFF in the central directory with the
    /// real values in a zip64 extra field, as a writer must for members above 4 GiB.
    static func zip(_ members: [ZipMember], zip64ExtraFields: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = []
        var centralDirectory: [UInt8] = []
        for member in members {
            let name = Array(member.name.utf8)
            let crc = referenceCRC32(member.data)
            let localOffset = bytes.count
            let unpaddedDataStart = localOffset + 30 + name.count + 4
            let padding = (64 - unpaddedDataStart % 64) % 64
            let extra: [UInt8] = Array("FB".utf8) + littleEndian(UInt16(padding)) + [UInt8](repeating: UInt8(ascii: "Z"), count: padding)

            bytes += littleEndian(UInt32(0x0403_4B50))
            bytes += littleEndian(UInt16(20)) + littleEndian(UInt16(0x0808)) + littleEndian(member.method)
            bytes += littleEndian(UInt16(0)) + littleEndian(UInt16(0))  // time, date
            bytes += littleEndian(UInt32(0)) + littleEndian(UInt32(0)) + littleEndian(UInt32(0))  // crc, sizes
            bytes += littleEndian(UInt16(name.count)) + littleEndian(UInt16(extra.count))
            bytes += name + extra + member.data
            bytes += littleEndian(UInt32(0x0807_4B50)) + littleEndian(crc)
            bytes += littleEndian(UInt32(member.data.count)) + littleEndian(UInt32(member.data.count))

            let size32 = zip64ExtraFields ? UInt32.max : UInt32(member.data.count)
            let offset32 = zip64ExtraFields ? UInt32.max : UInt32(localOffset)
            let centralExtra: [UInt8] = zip64ExtraFields
                ? littleEndian(UInt16(1)) + littleEndian(UInt16(24))
                    + littleEndian(UInt64(member.data.count)) + littleEndian(UInt64(member.data.count))
                    + littleEndian(UInt64(localOffset))
                : []
            centralDirectory += littleEndian(UInt32(0x0201_4B50))
            centralDirectory += littleEndian(UInt16(0x031E)) + littleEndian(UInt16(45))
            centralDirectory += littleEndian(UInt16(0x0808)) + littleEndian(member.method)
            centralDirectory += littleEndian(UInt16(0)) + littleEndian(UInt16(0))
            centralDirectory += littleEndian(member.storedCRC ?? crc) + littleEndian(size32) + littleEndian(size32)
            centralDirectory += littleEndian(UInt16(name.count)) + littleEndian(UInt16(centralExtra.count))
            centralDirectory += littleEndian(UInt16(0)) + littleEndian(UInt16(0)) + littleEndian(UInt16(0))  // comment, disk, attributes
            centralDirectory += littleEndian(UInt32(0)) + littleEndian(offset32)
            centralDirectory += name + centralExtra
        }

        let directoryOffset = bytes.count
        bytes += centralDirectory
        let zip64RecordOffset = bytes.count
        bytes += littleEndian(UInt32(0x0606_4B50)) + littleEndian(UInt64(44))
        bytes += littleEndian(UInt16(0x031E)) + littleEndian(UInt16(45))
        bytes += littleEndian(UInt32(0)) + littleEndian(UInt32(0))
        bytes += littleEndian(UInt64(members.count)) + littleEndian(UInt64(members.count))
        bytes += littleEndian(UInt64(centralDirectory.count)) + littleEndian(UInt64(directoryOffset))
        bytes += littleEndian(UInt32(0x0706_4B50)) + littleEndian(UInt32(0)) + littleEndian(UInt64(zip64RecordOffset)) + littleEndian(UInt32(1))
        bytes += littleEndian(UInt32(0x0605_4B50)) + littleEndian(UInt16(0)) + littleEndian(UInt16(0))
        bytes += littleEndian(UInt16(members.count)) + littleEndian(UInt16(members.count))
        bytes += littleEndian(UInt32(centralDirectory.count))
        bytes += littleEndian(zip64ExtraFields ? UInt32.max : UInt32(directoryOffset))
        bytes += littleEndian(UInt16(0))
        return bytes
    }

    // MARK: - pickle

    /// Emits pickle opcodes (protocol 2) one by one, numbering memo entries as CPython's pickler does.
    struct PickleWriter {
        var bytes: [UInt8] = []
        private var memoCount = 0

        mutating func raw(_ opcodeBytes: [UInt8]) { bytes += opcodeBytes }
        mutating func proto() { bytes += [0x80, 2] }
        mutating func mark() { bytes.append(UInt8(ascii: "(")) }
        mutating func emptyDict() { bytes.append(UInt8(ascii: "}")) }
        mutating func emptyTuple() { bytes.append(UInt8(ascii: ")")) }
        mutating func tuple() { bytes.append(UInt8(ascii: "t")) }
        mutating func reduce() { bytes.append(UInt8(ascii: "R")) }
        mutating func build() { bytes.append(UInt8(ascii: "b")) }
        mutating func setItem() { bytes.append(UInt8(ascii: "s")) }
        mutating func setItems() { bytes.append(UInt8(ascii: "u")) }
        mutating func persistentID() { bytes.append(UInt8(ascii: "Q")) }
        mutating func newFalse() { bytes.append(0x89) }
        mutating func stop() { bytes.append(UInt8(ascii: ".")) }

        mutating func string(_ text: String) {
            let utf8 = Array(text.utf8)
            bytes.append(UInt8(ascii: "X"))
            bytes += WeightFixtures.littleEndian(UInt32(utf8.count)) + utf8
        }

        /// Writes BININT1, BININT2, BININT or LONG1, whichever is shortest, as CPython does.
        mutating func int(_ value: Int) {
            if (0...0xFF).contains(value) {
                bytes += [UInt8(ascii: "K"), UInt8(value)]
            } else if (0...0xFFFF).contains(value) {
                bytes.append(UInt8(ascii: "M"))
                bytes += WeightFixtures.littleEndian(UInt16(value))
            } else if let value32 = Int32(exactly: value) {
                bytes.append(UInt8(ascii: "J"))
                bytes += WeightFixtures.littleEndian(value32)
            } else {
                // LONG1: length byte, then the shortest little-endian two's complement encoding.
                var encoded = WeightFixtures.littleEndian(Int64(value))
                while encoded.count > 1 {
                    let top = encoded[encoded.count - 1]
                    let nextSignBit = encoded[encoded.count - 2] & 0x80
                    guard (top == 0x00 && nextSignBit == 0) || (top == 0xFF && nextSignBit != 0) else { break }
                    encoded.removeLast()
                }
                bytes += [0x8A, UInt8(encoded.count)] + encoded
            }
        }

        mutating func global(_ module: String, _ name: String) {
            bytes.append(UInt8(ascii: "c"))
            bytes += Array("\(module)\n\(name)\n".utf8)
        }

        /// Writes BINPUT (LONG_BINPUT past 255) to memoize the stack top under the next index, and returns that index.
        @discardableResult
        mutating func put() -> Int {
            let index = memoCount
            memoCount += 1
            if index < 256 {
                bytes += [UInt8(ascii: "q"), UInt8(index)]
            } else {
                bytes.append(UInt8(ascii: "r"))
                bytes += WeightFixtures.littleEndian(UInt32(index))
            }
            return index
        }

        mutating func get(_ index: Int) {
            if index < 256 {
                bytes += [UInt8(ascii: "h"), UInt8(index)]
            } else {
                bytes.append(UInt8(ascii: "j"))
                bytes += WeightFixtures.littleEndian(UInt32(index))
            }
        }

        /// Writes a tuple of ints as CPython does: EMPTY_TUPLE (not memoized), else TUPLE1-3 or MARK ... TUPLE, then BINPUT.
        mutating func intTuple(_ values: [Int]) {
            switch values.count {
            case 0:
                emptyTuple()
                return
            case 1...3:
                values.forEach { int($0) }
                bytes.append(0x84 + UInt8(values.count))
            default:
                mark()
                values.forEach { int($0) }
                tuple()
            }
            put()
        }
    }

    /// One tensor of a hand-built checkpoint: a view of storage record `storageKey`.
    struct TorchTensorSpec {
        var name: String
        var storageKey: String
        var storageType: String
        var storageElements: Int
        var offset: Int = 0
        var shape: [Int]
        var strides: [Int]
    }

    /// The pickle of a state dict as torch.save writes it (compare `pickletools.dis` of a real
    /// checkpoint): one `_rebuild_tensor_v2` REDUCE per tensor, the storage as a BINPERSID tuple,
    /// and the globals memoized on first use.
    ///
    /// With `orderedDict`, the root is `collections.OrderedDict()` followed by a BUILD that sets
    /// `_metadata`, the layout of `model.state_dict()`; otherwise a plain dict.
    static func stateDictPickle(_ tensors: [TorchTensorSpec], orderedDict: Bool) -> [UInt8] {
        var writer = PickleWriter()
        var globalMemo: [String: Int] = [:]
        func global(_ module: String, _ name: String) {
            if let index = globalMemo["\(module).\(name)"] {
                writer.get(index)
            } else {
                writer.global(module, name)
                globalMemo["\(module).\(name)"] = writer.put()
            }
        }
        var storageTypeMemo: [String: Int] = [:]

        writer.proto()
        if orderedDict {
            global("collections", "OrderedDict")
            writer.emptyTuple()
            writer.reduce()
        } else {
            writer.emptyDict()
        }
        writer.put()
        writer.mark()
        for tensor in tensors {
            writer.string(tensor.name)
            writer.put()
            global("torch._utils", "_rebuild_tensor_v2")
            writer.mark()
            writer.mark()
            writer.string("storage")
            writer.put()
            if let index = storageTypeMemo[tensor.storageType] {
                writer.get(index)
            } else {
                writer.global("torch", tensor.storageType)
                storageTypeMemo[tensor.storageType] = writer.put()
            }
            writer.string(tensor.storageKey)
            writer.put()
            writer.string("cpu")
            writer.put()
            writer.int(tensor.storageElements)
            writer.tuple()
            writer.put()
            writer.persistentID()
            writer.int(tensor.offset)
            writer.intTuple(tensor.shape)
            writer.intTuple(tensor.strides)
            writer.newFalse()
            global("collections", "OrderedDict")
            writer.emptyTuple()
            writer.reduce()
            writer.put()
            writer.tuple()
            writer.put()
            writer.reduce()
            writer.put()
        }
        writer.setItems()
        if orderedDict {
            // state = {'_metadata': OrderedDict([('', {'version': 1})])}
            writer.emptyDict()
            writer.put()
            writer.string("_metadata")
            writer.put()
            global("collections", "OrderedDict")
            writer.emptyTuple()
            writer.reduce()
            writer.put()
            writer.string("")
            writer.put()
            writer.emptyDict()
            writer.put()
            writer.string("version")
            writer.put()
            writer.int(1)
            writer.setItem()
            writer.setItem()
            writer.setItem()
            writer.build()
        }
        writer.stop()
        return writer.bytes
    }

    /// A checkpoint zip with the records torch.save writes under `archive/`, in its order.
    static func torchCheckpoint(pickle: [UInt8], storages: [(key: String, bytes: [UInt8])], byteOrder: String = "little") -> [UInt8] {
        var members = [
            ZipMember(name: "archive/data.pkl", data: pickle),
            ZipMember(name: "archive/.format_version", data: Array("1".utf8)),
            ZipMember(name: "archive/.storage_alignment", data: Array("64".utf8)),
            ZipMember(name: "archive/byteorder", data: Array(byteOrder.utf8)),
        ]
        members += storages.map { ZipMember(name: "archive/data/\($0.key)", data: $0.bytes) }
        members.append(ZipMember(name: "archive/version", data: Array("3\n".utf8)))
        return zip(members)
    }
}
