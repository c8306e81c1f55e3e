import Foundation

/// Reader for `torch.save(model.state_dict(), path)` checkpoints in the zip format (PyTorch 1.6 and later).
///
/// The archive holds `ARCHIVE/data.pkl`, a pickle of the state dict in which every tensor is
/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage a
/// persistent ID `('storage', torch.FloatStorage, key, location, element count)`. The storage bytes
/// are the record `ARCHIVE/data/KEY`, in the byte order named by `ARCHIVE/byteorder`.
/// The pickle is interpreted, never executed: only tensor-rebuilding globals are accepted.
public enum PyTorchCheckpoint {
    public static func load(path: String) throws -> WeightFile {
        try read(readWeightFileBytes(path: path), path: path)
    }

    /// Parses and validates a whole checkpoint held in memory; `path` names it in errors.
    public static func read(_ bytes: [UInt8], path: String) throws -> WeightFile {
        let fileReader = ByteReader(bytes, context: path)
        let archive = try ZipArchive(reader: fileReader)
        let pickleEntry = try findPickle(in: archive)
        let archivePrefix = String(pickleEntry.name.dropLast("data.pkl".count))
        if archive.entry(named: archivePrefix + "constants.pkl") != nil {
            throw fileReader.error("this is a TorchScript archive (torch.jit.save); save model.state_dict() with torch.save instead")
        }
        let bigEndian = try readByteOrder(archive: archive, prefix: archivePrefix)

        let pickleBytes = Array(bytes[try archive.dataRange(of: pickleEntry)])
        let delegate = TorchPickleDelegate()
        var unpickler = Unpickler(bytes: pickleBytes, context: "\(path): \(pickleEntry.name)", delegate: delegate)
        let root = try unpickler.load()
        guard case .dict(let stateDict) = root else {
            throw fileReader.error("\(pickleEntry.name) holds a \(root.typeName), expected a state_dict (a dict of tensors)")
        }

        var builder = TensorBuilder(
            archive: archive, prefix: archivePrefix, bigEndian: bigEndian, elementBudget: bytes.count)
        var tensors: [WeightTensor] = []
        for (key, value) in stateDict.entries {
            guard case .string(let name) = key else {
                throw fileReader.error("state_dict key of type \(key.typeName) is not a string")
            }
            guard case .custom(let object) = value, let tensor = object as? TorchTensor else {
                throw fileReader.error("state_dict entry '\(name)' is a \(value.typeName), not a tensor; expected a file written by torch.save(model.state_dict(), path)")
            }
            tensors.append(try builder.build(name: name, tensor: tensor))
        }
        return WeightFile(path: path, format: "pytorch", tensors: tensors)
    }

    /// Finds the one `ARCHIVE/data.pkl` record; ARCHIVE is a single path component.
    private static func findPickle(in archive: ZipArchive) throws -> ZipEntry {
        let candidates = archive.entries.filter { entry in
            let components = entry.name.split(separator: "/", omittingEmptySubsequences: false)
            return components.count == 2 && !components[0].isEmpty && components[1] == "data.pkl"
        }
        guard let first = candidates.first else {
            throw archive.reader.error("zip archive has no ARCHIVE/data.pkl record, so it is not a torch.save checkpoint")
        }
        guard candidates.count == 1 else {
            let names = candidates.map { "'\($0.name)'" }.joined(separator: ", ")
            throw archive.reader.error("zip archive has several data.pkl records (\(names))")
        }
        return first
    }

    /// Returns true for big-endian storages.
    private static func readByteOrder(archive: ZipArchive, prefix: String) throws -> Bool {
        // torch.load falls back to the loading machine's native order when the record is missing
        // (torch/serialization.py, get_default_load_endianness); mnc runs on little-endian hosts.
        guard let entry = archive.entry(named: prefix + "byteorder") else {
            return false
        }
        let text = String(decoding: archive.reader.bytes[try archive.dataRange(of: entry)], as: UTF8.self)
        switch text.trimmingCharacters(in: .whitespacesAndNewlines) {
        case "little": return false
        case "big": return true
        default: throw archive.reader.error("record '\(entry.name)' contains '\(text)', expected 'little' or 'big'")
        }
    }
}

/// A storage named by a persistent ID; its bytes are read only when a tensor uses it.
final class TorchStorage: PickleCustomObject {
    let typeName = "storage"
    /// The storage class name without `torch.`, e.g. `FloatStorage`.
    let storageType: String
    let key: String
    let elementCount: Int

    init(storageType: String, key: String, elementCount: Int) {
        self.storageType = storageType
        self.key = key
        self.elementCount = elementCount
    }
}

/// The arguments of one `_rebuild_tensor_v2` call, validated against the storage when the tensor is built.
final class TorchTensor: PickleCustomObject {
    let typeName = "tensor"
    let storage: TorchStorage
    let storageOffset: Int
    let shape: [Int]
    let strides: [Int]

    init(storage: TorchStorage, storageOffset: Int, shape: [Int], strides: [Int]) {
        self.storage = storage
        self.storageOffset = storageOffset
        self.shape = shape
        self.strides = strides
    }
}

/// Torch storage classes that the reader converts, with the torch dtype name reported in `WeightTensor.dtype`.
private let supportedStorageTypes: [String: (elementType: StoredElementType, dtype: String)] = [
    "FloatStorage": (.float32, "float32"),
    "HalfStorage": (.float16, "float16"),
    "BFloat16Storage": (.bfloat16, "bfloat16"),
    "DoubleStorage": (.float64, "float64"),
    "LongStorage": (.int64, "int64"),
    "IntStorage": (.int32, "int32"),
]

/// Other torch storage classes: accepted as names in the pickle, rejected when a tensor uses them.
private let unsupportedStorageTypes: [String: String] = [
    "ByteStorage": "uint8", "CharStorage": "int8", "ShortStorage": "int16", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QUInt8Storage": "quint8", "QInt8Storage": "qint8", "QInt32Storage": "qint32",
]

/// Interprets the globals, calls and persistent IDs of a state_dict pickle without running anything.
private final class TorchPickleDelegate: PickleDelegate {
    /// Functions that REDUCE may call; everything else named by a global is inert data.
    private static let callableGlobals: Set<String> = [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
    ]
    /// Tensor classes that `_rebuild_from_type_v2` may name as the result type.
    private static let tensorClassGlobals: Set<String> = ["torch.Tensor", "torch.nn.parameter.Parameter"]

    func resolveGlobal(module: String, name: String) throws -> PickleValue {
        let qualifiedName = "\(module).\(name)"
        let isStorageType = module == "torch"
            && (supportedStorageTypes[name] != nil || unsupportedStorageTypes[name] != nil)
        guard Self.callableGlobals.contains(qualifiedName) || Self.tensorClassGlobals.contains(qualifiedName) || isStorageType else {
            throw PickleRejection("pickle references global '\(qualifiedName)', which is not a tensor-rebuilding function; only state_dict checkpoints are read, and no code from them is run")
        }
        return .global(module: module, name: name)
    }

    func persistentLoad(_ id: PickleValue) throws -> PickleValue {
        guard case .tuple(let tuple) = id, tuple.items.count == 5,
              case .string("storage") = tuple.items[0] else {
            throw PickleRejection("persistent ID is a \(id.typeName), expected ('storage', type, key, location, size)")
        }
        guard case .global("torch", let storageType) = tuple.items[1] else {
            throw PickleRejection("persistent ID names storage type \(tuple.items[1].typeName), expected a torch storage class")
        }
        guard case .string(let key) = tuple.items[2] else {
            throw PickleRejection("persistent ID storage key is a \(tuple.items[2].typeName), expected a string")
        }
        guard case .int(let elementCount) = tuple.items[4], elementCount >= 0 else {
            throw PickleRejection("persistent ID for storage '\(key)' has an invalid element count")
        }
        // The location (item 3, e.g. "cpu" or "cuda:0") does not matter: the data is read on the host.
        return .custom(TorchStorage(storageType: storageType, key: key, elementCount: elementCount))
    }

    func reduce(_ callable: PickleValue, arguments: PickleTuple) throws -> PickleValue {
        guard case .global(let module, let name) = callable else {
            throw PickleRejection("REDUCE calls a \(callable.typeName), expected a global function")
        }
        let items = arguments.items
        switch "\(module).\(name)" {
        case "collections.OrderedDict":
            guard items.isEmpty else {
                throw PickleRejection("collections.OrderedDict is called with \(items.count) arguments, expected none")
            }
            return .dict(PickleDict())

        case "torch._utils._rebuild_tensor_v2":
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            guard items.count == 6 || items.count == 7 else {
                throw PickleRejection("_rebuild_tensor_v2 is called with \(items.count) arguments, expected 6 or 7")
            }
            guard case .custom(let object) = items[0], let storage = object as? TorchStorage else {
                throw PickleRejection("_rebuild_tensor_v2 storage argument is a \(items[0].typeName)")
            }
            guard case .int(let storageOffset) = items[1] else {
                throw PickleRejection("_rebuild_tensor_v2 storage offset is a \(items[1].typeName), expected an int")
            }
            return .custom(TorchTensor(
                storage: storage, storageOffset: storageOffset,
                shape: try integers(items[2], "size"), strides: try integers(items[3], "stride")))

        case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
            // (data, requires_grad, backward_hooks[, state]): the parameter is its data tensor.
            guard let data = items.first, case .custom(let object) = data, object is TorchTensor else {
                throw PickleRejection("\(name) is called without a tensor as its first argument")
            }
            return data

        case "torch._tensor._rebuild_from_type_v2":
            // (func, new_type, args, state): the tensor is func(*args); new_type and state only add Python attributes.
            guard items.count == 4, case .tuple(let innerArguments) = items[2] else {
                throw PickleRejection("_rebuild_from_type_v2 is called with unexpected arguments")
            }
            guard case .global(let typeModule, let typeName) = items[1],
                  Self.tensorClassGlobals.contains("\(typeModule).\(typeName)") else {
                throw PickleRejection("_rebuild_from_type_v2 result type is \(items[1].typeName), expected torch.Tensor or torch.nn.parameter.Parameter")
            }
            guard case .global(_, let functionName) = items[0], functionName != name else {
                throw PickleRejection("_rebuild_from_type_v2 function is \(items[0].typeName)")
            }
            return try reduce(items[0], arguments: innerArguments)

        default:
            throw PickleRejection("global '\(module).\(name)' cannot be called")
        }
    }

    func build(_ object: PickleValue, state: PickleValue) throws {
        // A state_dict is an OrderedDict whose BUILD state sets the `_metadata` attribute
        // (module versions); it does not affect the tensors, so it is dropped.
        guard case .dict = object else {
            throw PickleRejection("BUILD on a \(object.typeName) is not supported")
        }
    }

    private func integers(_ value: PickleValue, _ subject: String) throws -> [Int] {
        guard case .tuple(let tuple) = value else {
            throw PickleRejection("_rebuild_tensor_v2 \(subject) is a \(value.typeName), expected a tuple of ints")
        }
        return try tuple.items.map { item in
            guard case .int(let integer) = item else {
                throw PickleRejection("_rebuild_tensor_v2 \(subject) contains a \(item.typeName), expected ints")
            }
            return integer
        }
    }
}

/// Converts rebuilt tensors to float32 `WeightTensor`s, decoding each storage record once.
private struct TensorBuilder {
    let archive: ZipArchive
    let prefix: String
    let bigEndian: Bool
    /// Elements that may still be produced. Views share storages, so without a limit a small file
    /// could expand into huge tensors; the limit is the file's size in bytes.
    // NOTE: the limit is a judgment call; it admits up to 4 float32 views of every stored element.
    var elementBudget: Int
    private var decodedStorages: [String: [Float]] = [:]

    init(archive: ZipArchive, prefix: String, bigEndian: Bool, elementBudget: Int) {
        self.archive = archive
        self.prefix = prefix
        self.bigEndian = bigEndian
        self.elementBudget = elementBudget
    }

    private func error(_ message: String) -> MNCError {
        archive.reader.error(message)
    }

    mutating func build(name: String, tensor: TorchTensor) throws -> WeightTensor {
        let subject = "tensor '\(name)'"
        let storage = tensor.storage
        guard let (elementType, dtype) = supportedStorageTypes[storage.storageType] else {
            let dtype = unsupportedStorageTypes[storage.storageType] ?? "unknown"
            throw error("\(subject): unsupported storage type torch.\(storage.storageType) (\(dtype)); supported: float32, float16, bfloat16, float64, int64, int32")
        }

        let shape = tensor.shape
        let strides = tensor.strides
        guard strides.count == shape.count else {
            throw error("\(subject): size \(shape) and stride \(strides) have different lengths")
        }
        guard shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }), tensor.storageOffset >= 0 else {
            throw error("\(subject): negative value in size \(shape), stride \(strides) or storage offset \(tensor.storageOffset)")
        }
        var elementCount = 1
        for dimension in shape {
            let (product, overflow) = elementCount.multipliedReportingOverflow(by: dimension)
            guard !overflow else {
                throw error("\(subject): element count of size \(shape) overflows a 64-bit integer")
            }
            elementCount = product
        }
        guard elementCount <= elementBudget else {
            throw error("\(subject): size \(shape) needs \(elementCount) elements, more than the remaining limit of \(elementBudget) (the file's size in bytes)")
        }

        // Largest storage index the view touches: offset + Σ (size - 1) × stride over dimensions of size > 1.
        var lastIndex = tensor.storageOffset
        for (size, stride) in zip(shape, strides) where size > 1 {
            let (step, productOverflow) = (size - 1).multipliedReportingOverflow(by: stride)
            let (sum, sumOverflow) = lastIndex.addingReportingOverflow(step)
            guard !productOverflow, !sumOverflow else {
                throw error("\(subject): size \(shape) with stride \(strides) overflows a 64-bit index")
            }
            lastIndex = sum
        }
        let storageRecord = prefix + "data/" + storage.key
        if elementCount > 0 && lastIndex >= storage.elementCount {
            throw error("\(subject): size \(shape) with stride \(strides) at storage offset \(tensor.storageOffset) reads element \(lastIndex), but storage '\(storageRecord)' has \(storage.elementCount) elements")
        }

        let storageData = try decodeStorage(storage, elementType: elementType, record: storageRecord, subject: subject)
        elementBudget -= elementCount
        let data = gather(storageData, offset: tensor.storageOffset, shape: shape, strides: strides, count: elementCount)
        return WeightTensor(name: name, dtype: dtype, shape: shape, data: data)
    }

    private mutating func decodeStorage(_ storage: TorchStorage, elementType: StoredElementType, record: String, subject: String) throws -> [Float] {
        if let cached = decodedStorages[storage.key] {
            return cached
        }
        guard let entry = archive.entry(named: record) else {
            throw error("\(subject): storage record '\(record)' is missing from the zip archive")
        }
        let range = try archive.dataRange(of: entry)
        let (byteCount, overflow) = storage.elementCount.multipliedReportingOverflow(by: elementType.byteCount)
        guard !overflow, byteCount == range.count else {
            throw error("\(subject): storage record '\(record)' holds \(range.count) bytes, but the pickle declares \(storage.elementCount) elements of \(elementType.byteCount) bytes")
        }
        let data = try elementType.decode(
            from: archive.reader, offset: range.lowerBound, count: storage.elementCount,
            bigEndian: bigEndian, subject: "storage record '\(record)'")
        decodedStorages[storage.key] = data
        return data
    }

    /// Copies a strided view out of its storage in row-major order. The caller has checked that every index is in range.
    private func gather(_ storage: [Float], offset: Int, shape: [Int], strides: [Int], count: Int) -> [Float] {
        if count == 0 {
            return []
        }
        // A dimension of size 1 never moves the index, whatever its stride says.
        let effectiveStrides = zip(shape, strides).map { size, stride in size == 1 ? 0 : stride }
        var contiguousStride = 1
        var isContiguous = true
        for (size, stride) in zip(shape, effectiveStrides).reversed() where size != 1 {
            isContiguous = isContiguous && stride == contiguousStride
            contiguousStride *= size
        }
        if isContiguous {
            return offset == 0 && count == storage.count ? storage : Array(storage[offset..<(offset + count)])
        }

        // Odometer over the indices, last dimension fastest; `position` is the storage index.
        var result: [Float] = []
        result.reserveCapacity(count)
        var index = [Int](repeating: 0, count: shape.count)
        var position = offset
        for _ in 0..<count {
            result.append(storage[position])
            var axis = shape.count - 1
            while axis >= 0 {
                index[axis] += 1
                position += effectiveStrides[axis]
                if index[axis] < shape[axis] {
                    break
                }
                position -= effectiveStrides[axis] * shape[axis]
                index[axis] = 0
                axis -= 1
            }
        }
        return result
    }
}
