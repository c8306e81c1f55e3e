import Foundation
import XCTest
@testable import MNC

final class PyTorchCheckpointTests: XCTestCase {
    override class func tearDown() {
        WeightFixtures.removeTemporaryFiles()
        super.tearDown()
    }

    private typealias Spec = WeightFixtures.TorchTensorSpec

    // MARK: - Hand-built checkpoints

    /// Tensors covering shared storages, storage offsets, transposed and gapped strides, size-1
    /// dimensions with arbitrary strides, an int64 scalar and the half-precision storages.
    private static let fixtureTensors: [Spec] = [
        Spec(name: "conv.weight", storageKey: "0", storageType: "FloatStorage", storageElements: 6, shape: [2, 3], strides: [3, 1]),
        Spec(name: "conv.weight_t", storageKey: "0", storageType: "FloatStorage", storageElements: 6, shape: [3, 2], strides: [1, 3]),
        Spec(name: "bn.bias", storageKey: "1", storageType: "FloatStorage", storageElements: 5, offset: 2, shape: [3], strides: [1]),
        Spec(name: "strided", storageKey: "2", storageType: "FloatStorage", storageElements: 8, offset: 1, shape: [2, 2], strides: [4, 2]),
        Spec(name: "row", storageKey: "1", storageType: "FloatStorage", storageElements: 5, shape: [1, 3], strides: [999, 1]),
        // Non-contiguous with a size-1 dimension whose stride (written as LONG1) would overflow if it were followed.
        Spec(name: "unit_axis", storageKey: "2", storageType: "FloatStorage", storageElements: 8, shape: [2, 1, 2], strides: [1, Int.max, 4]),
        Spec(name: "bn.num_batches_tracked", storageKey: "3", storageType: "LongStorage", storageElements: 1, shape: [], strides: []),
        Spec(name: "half", storageKey: "4", storageType: "HalfStorage", storageElements: 2, shape: [2], strides: [1]),
        Spec(name: "bfloat", storageKey: "5", storageType: "BFloat16Storage", storageElements: 2, shape: [2], strides: [1]),
    ]

    private static func fixtureStorages(bigEndian: Bool = false) -> [(key: String, bytes: [UInt8])] {
        func int64(_ value: Int64) -> [UInt8] {
            bigEndian ? WeightFixtures.bigEndian(value) : WeightFixtures.littleEndian(value)
        }
        func uint16(_ values: [UInt16]) -> [UInt8] {
            values.flatMap { bigEndian ? WeightFixtures.bigEndian($0) : WeightFixtures.littleEndian($0) }
        }
        return [
            ("0", WeightFixtures.float32Bytes([1, 2, 3, 4, 5, 6], bigEndian: bigEndian)),
            ("1", WeightFixtures.float32Bytes([10, 11, 12, 13, 14], bigEndian: bigEndian)),
            ("2", WeightFixtures.float32Bytes([0, 1, 2, 3, 4, 5, 6, 7], bigEndian: bigEndian)),
            ("3", int64(7)),
            ("4", uint16([0x3C00, 0xC000])),  // binary16 1.0, -2.0
            ("5", uint16([0x3F80, 0x4040])),  // bfloat16 1.0, 3.0
        ]
    }

    private static func fixtureCheckpoint(orderedDict: Bool = true, bigEndian: Bool = false) -> [UInt8] {
        WeightFixtures.torchCheckpoint(
            pickle: WeightFixtures.stateDictPickle(fixtureTensors, orderedDict: orderedDict),
            storages: fixtureStorages(bigEndian: bigEndian),
            byteOrder: bigEndian ? "big" : "little")
    }

    /// Expected (dtype, shape, values) per tensor, worked out by hand from the storages and strides.
    private static let expected: [(name: String, dtype: String, shape: [Int], data: [Float])] = [
        ("conv.weight", "float32", [2, 3], [1, 2, 3, 4, 5, 6]),
        ("conv.weight_t", "float32", [3, 2], [1, 4, 2, 5, 3, 6]),
        ("bn.bias", "float32", [3], [12, 13, 14]),
        ("strided", "float32", [2, 2], [1, 3, 5, 7]),
        ("row", "float32", [1, 3], [10, 11, 12]),
        ("unit_axis", "float32", [2, 1, 2], [0, 4, 1, 5]),
        ("bn.num_batches_tracked", "int64", [], [7]),
        ("half", "float16", [2], [1, -2]),
        ("bfloat", "bfloat16", [2], [1, 3]),
    ]

    private func assertMatchesExpected(_ file: WeightFile, file sourceFile: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(file.format, "pytorch", file: sourceFile, line: line)
        XCTAssertEqual(file.tensors.map(\.name), Self.expected.map(\.name), file: sourceFile, line: line)
        for (tensor, expected) in zip(file.tensors, Self.expected) {
            XCTAssertEqual(tensor.dtype, expected.dtype, "\(tensor.name)", file: sourceFile, line: line)
            XCTAssertEqual(tensor.shape, expected.shape, "\(tensor.name)", file: sourceFile, line: line)
            XCTAssertEqual(tensor.data, expected.data, "\(tensor.name)", file: sourceFile, line: line)
        }
    }

    func testHandBuiltOrderedDict() throws {
        assertMatchesExpected(try PyTorchCheckpoint.read(Self.fixtureCheckpoint(orderedDict: true), path: "fixture.pth"))
    }

    func testHandBuiltPlainDict() throws {
        assertMatchesExpected(try PyTorchCheckpoint.read(Self.fixtureCheckpoint(orderedDict: false), path: "fixture.pth"))
    }

    func testBigEndianByteOrder() throws {
        assertMatchesExpected(try PyTorchCheckpoint.read(Self.fixtureCheckpoint(bigEndian: true), path: "fixture.pth"))
    }

    func testZip64ExtraFields() throws {
        var members = [
            WeightFixtures.ZipMember(name: "archive/data.pkl", data: WeightFixtures.stateDictPickle(Self.fixtureTensors, orderedDict: true)),
            WeightFixtures.ZipMember(name: "archive/byteorder", data: Array("little".utf8)),
        ]
        members += Self.fixtureStorages().map { WeightFixtures.ZipMember(name: "archive/data/\($0.key)", data: $0.bytes) }
        let bytes = WeightFixtures.zip(members, zip64ExtraFields: true)
        assertMatchesExpected(try PyTorchCheckpoint.read(bytes, path: "fixture.pth"))
    }

    func testLoadWeightFileDetectsZip() throws {
        let path = try WeightFixtures.writeTemporaryFile(Self.fixtureCheckpoint(), name: "fixture.pth")
        assertMatchesExpected(try loadWeightFile(path: path))
    }

    func testReferenceCRC32CheckValue() {
        // The standard CRC-32 check value: CRC of the ASCII bytes "123456789".
        XCTAssertEqual(WeightFixtures.referenceCRC32(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(ZipArchive.crc32(ArraySlice(Array("123456789".utf8))), 0xCBF4_3926)
    }

    // MARK: - Real checkpoints

    func testRealCheckpointsMatchSafetensors() throws {
        var compared = 0
        for caseDirectory in try WeightFixtures.torchCaseDirectories() {
            let pthPath = caseDirectory.appendingPathComponent("weights.pth").path
            guard FileManager.default.fileExists(atPath: pthPath) else { continue }
            let checkpoint = try loadWeightFile(path: pthPath)
            let reference = try loadWeightFile(path: caseDirectory.appendingPathComponent("weights.safetensors").path)
            let caseName = caseDirectory.lastPathComponent
            XCTAssertEqual(checkpoint.format, "pytorch", caseName)

            let referenceByName = Dictionary(uniqueKeysWithValues: reference.tensors.map { ($0.name, $0) })
            XCTAssertEqual(Set(checkpoint.tensors.map(\.name)), Set(referenceByName.keys), caseName)
            XCTAssertEqual(checkpoint.tensors.count, reference.tensors.count, caseName)
            for tensor in checkpoint.tensors {
                guard let expected = referenceByName[tensor.name] else { continue }
                XCTAssertEqual(tensor.shape, expected.shape, "\(caseName) \(tensor.name)")
                XCTAssertEqual(tensor.data.map(\.bitPattern), expected.data.map(\.bitPattern), "\(caseName) \(tensor.name)")
                let expectedDtype = ["F32": "float32", "I64": "int64"][expected.dtype]
                XCTAssertEqual(tensor.dtype, expectedDtype, "\(caseName) \(tensor.name)")
            }
            compared += 1
        }
        XCTAssertGreaterThan(compared, 0, "no weights.pth found under data/torch")
    }

    func testRealCheckpointKnownKeys() throws {
        let caseDirectory = try WeightFixtures.sharedDataDirectory().appendingPathComponent("torch/mobilenet_v2_1.0_224")
        let file = try loadWeightFile(path: caseDirectory.appendingPathComponent("weights.pth").path)
        let byName = Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0) })

        XCTAssertEqual(file.tensors.count, 314)
        XCTAssertEqual(file.tensors.first?.name, "features.0.0.weight")
        XCTAssertEqual(byName["features.0.0.weight"]?.shape, [32, 3, 3, 3])
        XCTAssertEqual(byName["features.1.conv.0.0.weight"]?.shape, [32, 1, 3, 3])
        XCTAssertEqual(byName["classifier.1.weight"]?.shape, [1000, 1280])
        XCTAssertEqual(byName["features.0.1.num_batches_tracked"]?.shape, [])
        XCTAssertEqual(byName["features.0.1.num_batches_tracked"]?.dtype, "int64")
        // First elements read with Python's struct module from the file's storage record.
        XCTAssertEqual(byName["features.0.0.weight"]?.data.prefix(4).map(\.bitPattern), [0x3DF9_84EC, 0xBD73_A21C, 0xBA96_4A7A, 0xBC7D_22EF])
    }

    // MARK: - Bad input

    private func assertReadError(_ bytes: [UInt8], contains fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try PyTorchCheckpoint.read(bytes, path: "bad.pth"), file: file, line: line) { error in
            guard let error = error as? MNCError else {
                return XCTFail("expected MNCError, got \(error)", file: file, line: line)
            }
            XCTAssertFalse(error.message.contains("\n"), "message is not one line: \(error.message)", file: file, line: line)
            XCTAssertTrue(error.message.hasPrefix("bad.pth: "), error.message, file: file, line: line)
            for fragment in fragments {
                XCTAssertTrue(error.message.contains(fragment), "'\(fragment)' not in: \(error.message)", file: file, line: line)
            }
        }
    }

    /// A checkpoint whose data.pkl is `pickle`, with the fixture storages.
    private func checkpoint(pickle: [UInt8]) -> [UInt8] {
        WeightFixtures.torchCheckpoint(pickle: pickle, storages: Self.fixtureStorages())
    }

    func testTruncatedZip() {
        let bytes = Self.fixtureCheckpoint()
        assertReadError(Array(bytes.dropLast(10)), contains: ["end of central directory record not found"])
        assertReadError(Array(bytes.prefix(12)), contains: ["truncated zip archive: 12 bytes"])
    }

    func testEveryTruncationRejected() {
        let bytes = Self.fixtureCheckpoint()
        for length in 0..<bytes.count {
            XCTAssertThrowsError(try PyTorchCheckpoint.read(Array(bytes.prefix(length)), path: "bad.pth"), "prefix of \(length) bytes") { error in
                XCTAssertTrue(error is MNCError, "prefix of \(length) bytes: \(error)")
            }
        }
    }

    func testCorruptBytesNeverTrap() {
        // Each single-byte change must load or throw MNCError; a trap would abort the test run.
        let bytes = Self.fixtureCheckpoint()
        for position in bytes.indices {
            var corrupt = bytes
            corrupt[position] ^= 0xFF
            do {
                _ = try PyTorchCheckpoint.read(corrupt, path: "bad.pth")
            } catch {
                XCTAssertTrue(error is MNCError, "byte \(position): \(error)")
            }
        }
    }

    func testZipWithoutPickle() {
        let bytes = WeightFixtures.zip([WeightFixtures.ZipMember(name: "archive/version", data: Array("3\n".utf8))])
        assertReadError(bytes, contains: ["no ARCHIVE/data.pkl record"])
    }

    func testCompressedEntry() {
        let bytes = WeightFixtures.zip([
            WeightFixtures.ZipMember(name: "archive/data.pkl", data: [0x80, 0x02, 0x7D, 0x2E], method: 8),
        ])
        assertReadError(bytes, contains: ["'archive/data.pkl'", "compression method 8 (deflate)"])
    }

    func testCRCMismatch() {
        let pickle = WeightFixtures.stateDictPickle(Self.fixtureTensors, orderedDict: false)
        var members = [WeightFixtures.ZipMember(name: "archive/data.pkl", data: pickle)]
        members += Self.fixtureStorages().map { WeightFixtures.ZipMember(name: "archive/data/\($0.key)", data: $0.bytes) }
        members[1].storedCRC = 0x1234_5678
        assertReadError(WeightFixtures.zip(members), contains: ["'archive/data/0'", "CRC-32 mismatch"])
    }

    func testDuplicateZipEntry() {
        let bytes = WeightFixtures.zip([
            WeightFixtures.ZipMember(name: "archive/data.pkl", data: [0x80, 0x02, 0x7D, 0x2E]),
            WeightFixtures.ZipMember(name: "archive/data.pkl", data: [0x80, 0x02, 0x7D, 0x2E]),
        ])
        assertReadError(bytes, contains: ["duplicate zip entry 'archive/data.pkl'"])
    }

    func testTorchScriptArchive() {
        let bytes = WeightFixtures.zip([
            WeightFixtures.ZipMember(name: "archive/data.pkl", data: [0x80, 0x02, 0x7D, 0x2E]),
            WeightFixtures.ZipMember(name: "archive/constants.pkl", data: [0x80, 0x02, 0x29, 0x2E]),
        ])
        assertReadError(bytes, contains: ["TorchScript archive"])
    }

    func testUnsupportedOpcode() {
        // 'i' is INST, a protocol 0 opcode that imports and calls a class.
        assertReadError(checkpoint(pickle: [0x80, 0x02, UInt8(ascii: "i")]), contains: ["archive/data.pkl: offset 2", "unsupported pickle opcode 0x69 ('i')"])
    }

    func testForeignGlobal() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.global("os", "system")
        writer.string("echo hello")
        writer.raw([0x85])  // TUPLE1
        writer.reduce()
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["offset 2", "global 'os.system'"])
    }

    func testForeignStackGlobal() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.string("builtins")
        writer.string("eval")
        writer.raw([0x93])  // STACK_GLOBAL
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["global 'builtins.eval'"])
    }

    func testStorageTooSmallForStrides() {
        let tensors = [Spec(name: "big", storageKey: "0", storageType: "FloatStorage", storageElements: 6, shape: [3, 3], strides: [3, 1])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'big'", "reads element 8", "storage 'archive/data/0' has 6 elements"])
    }

    func testStorageOffsetPastEnd() {
        let tensors = [Spec(name: "shifted", storageKey: "1", storageType: "FloatStorage", storageElements: 5, offset: 3, shape: [3], strides: [1])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'shifted'", "storage offset 3 reads element 5"])
    }

    func testStorageRecordSizeMismatch() {
        let tensors = [Spec(name: "w", storageKey: "0", storageType: "FloatStorage", storageElements: 10, shape: [10], strides: [1])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["storage record 'archive/data/0' holds 24 bytes", "10 elements of 4 bytes"])
    }

    func testMissingStorageRecord() {
        let tensors = [Spec(name: "w", storageKey: "9", storageType: "FloatStorage", storageElements: 1, shape: [1], strides: [1])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'w'", "'archive/data/9' is missing"])
    }

    func testUnsupportedStorageType() {
        let tensors = [Spec(name: "mask", storageKey: "0", storageType: "ByteStorage", storageElements: 24, shape: [24], strides: [1])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'mask'", "unsupported storage type torch.ByteStorage (uint8)"])
    }

    func testNegativeStride() {
        let tensors = [Spec(name: "w", storageKey: "0", storageType: "FloatStorage", storageElements: 6, offset: 5, shape: [6], strides: [-1])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'w'", "negative value"])
    }

    func testElementCountOverflow() {
        let huge = 1 << 31 - 1
        let tensors = [Spec(name: "w", storageKey: "0", storageType: "FloatStorage", storageElements: 6, shape: [huge, huge, huge], strides: [0, 0, 0])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'w'", "overflows"])
    }

    func testExpandedViewOverBudget() {
        // Stride 0 repeats one element 10^6 times, far more elements than the file has bytes.
        let tensors = [Spec(name: "w", storageKey: "3", storageType: "LongStorage", storageElements: 1, shape: [1_000_000], strides: [0])]
        let pickle = WeightFixtures.stateDictPickle(tensors, orderedDict: false)
        assertReadError(checkpoint(pickle: pickle), contains: ["tensor 'w'", "1000000 elements"])
    }

    func testNonTensorEntry() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.emptyDict()
        writer.string("epoch")
        writer.int(3)
        writer.setItem()
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["state_dict entry 'epoch' is a int, not a tensor"])
    }

    func testRootNotDict() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.int(3)
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["holds a int, expected a state_dict"])
    }

    func testPickleWithoutStop() {
        assertReadError(checkpoint(pickle: [0x80, 0x02, UInt8(ascii: "}")]), contains: ["archive/data.pkl: truncated: opcode"])
    }

    func testMemoIndexNeverStored() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.get(5)
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["memo index 5 was never stored"])
    }

    func testStackUnderflow() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.reduce()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["offset 2", "stack underflow"])
    }

    func testNestingDepthBounded() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.emptyTuple()
        for _ in 0..<5000 {
            writer.raw([0x85])  // TUPLE1 wraps the top again
        }
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["nested deeper than 100 levels"])
    }

    func testListAppendedToItself() {
        var writer = WeightFixtures.PickleWriter()
        writer.proto()
        writer.raw([UInt8(ascii: "]")])  // EMPTY_LIST
        writer.put()
        writer.get(0)
        writer.raw([UInt8(ascii: "a")])  // APPEND
        writer.stop()
        assertReadError(checkpoint(pickle: writer.bytes), contains: ["changes a list after storing it"])
    }

    func testLegacyPickleFormat() throws {
        let path = try WeightFixtures.writeTemporaryFile([0x80, 0x02, 0x8A, 0x0A], name: "legacy.pth")
        XCTAssertThrowsError(try loadWeightFile(path: path)) { error in
            XCTAssertTrue("\(error)".contains("legacy PyTorch checkpoint"), "\(error)")
        }
    }
}
