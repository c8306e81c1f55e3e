import Foundation

/// Reads a state-dict weights file, choosing the reader from the file's content.
///
/// A zip archive (`PK` local header or empty-archive signature) is read as a PyTorch `torch.save`
/// checkpoint and anything else as safetensors. TFLite and ONNX files are rejected with a pointer
/// to the model-file loader, and a pre-1.6 `torch.save` pickle with a request to re-save it.
public func loadWeightFile(path: String) throws -> WeightFile {
    if path.lowercased().hasSuffix(".onnx") {
        throw MNCError("\(path): ONNX files are read by the model-file loader; this reader handles safetensors and PyTorch .pth weights")
    }
    let bytes = try readWeightFileBytes(path: path)

    if bytes.starts(with: [0x50, 0x4B, 0x03, 0x04]) || bytes.starts(with: [0x50, 0x4B, 0x05, 0x06]) {
        return try PyTorchCheckpoint.read(bytes, path: path)
    }
    if bytes.count >= 8 && bytes[4..<8].elementsEqual(Array("TFL3".utf8)) {
        throw MNCError("\(path): this is a TFLite model; TFLite files are read by the model-file loader, this reader handles safetensors and PyTorch .pth weights")
    }
    if bytes.first == 0x80 {
        // A bare pickle: torch.save before PyTorch 1.6, or with _use_new_zipfile_serialization=False.
        throw MNCError("\(path): legacy PyTorch checkpoint (a bare pickle, not a zip archive) is not supported; re-save it with torch.save(state_dict, path) from PyTorch 1.6 or later")
    }
    return try Safetensors.read(bytes, path: path)
}

/// Formats a listing for `mnc inspect`: a title line, one `name  dtype  [shape]` line per tensor in
/// file order, and a total line with the tensor count and the summed element count.
public func describeWeightFile(_ file: WeightFile) -> String {
    let nameWidth = file.tensors.map(\.name.count).max() ?? 0
    let dtypeWidth = file.tensors.map(\.dtype.count).max() ?? 0
    var lines = ["\(file.path) (\(file.format))"]
    var elementCount = 0
    for tensor in file.tensors {
        let name = tensor.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0)
        let dtype = tensor.dtype.padding(toLength: dtypeWidth, withPad: " ", startingAt: 0)
        let shape = "[" + tensor.shape.map(String.init).joined(separator: ", ") + "]"
        lines.append("\(name)  \(dtype)  \(shape)")
        elementCount += tensor.data.count
    }
    let tensorWord = file.tensors.count == 1 ? "tensor" : "tensors"
    let elementWord = elementCount == 1 ? "element" : "elements"
    lines.append("total: \(file.tensors.count) \(tensorWord), \(elementCount) \(elementWord)")
    return lines.joined(separator: "\n")
}

/// Reads a whole file, reporting a missing or unreadable file as an `MNCError`.
func readWeightFileBytes(path: String) throws -> [UInt8] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw MNCError("\(path): file not found")
    }
    guard !isDirectory.boolValue else {
        throw MNCError("\(path): is a directory, expected a weights file")
    }
    do {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return [UInt8](data)
    } catch {
        throw MNCError("\(path): cannot read file: \(error.localizedDescription)")
    }
}

/// A tensor element type that the weight readers convert to float32.
///
/// Integer types are accepted so that BatchNorm's `num_batches_tracked` (int64) loads. Converting
/// a 64-bit integer or a double to float32 rounds to nearest, which is harmless for those counters.
enum StoredElementType {
    case float32, float16, bfloat16, float64, int64, int32

    var byteCount: Int {
        switch self {
        case .float16, .bfloat16: return 2
        case .float32, .int32: return 4
        case .float64, .int64: return 8
        }
    }

    /// Decodes `count` consecutive elements starting at byte `offset` to float32.
    ///
    /// Throws when the range does not fit in the reader's bytes; `subject` names the tensor in that error.
    func decode(from reader: ByteReader, offset: Int, count: Int, bigEndian: Bool, subject: String) throws -> [Float] {
        let (byteLength, overflow) = count.multipliedReportingOverflow(by: byteCount)
        guard count >= 0, !overflow else {
            throw reader.error("\(subject): \(count) elements of \(byteCount) bytes do not fit in memory")
        }
        try reader.checkRange(offset: offset, count: byteLength, field: subject)

        return reader.bytes.withUnsafeBytes { raw in
            [Float](unsafeUninitializedCapacity: count) { buffer, initializedCount in
                for index in 0..<count {
                    let position = offset + index * byteCount
                    switch self {
                    case .float32:
                        buffer[index] = Float(bitPattern: loadInteger(raw, position, UInt32.self, bigEndian))
                    case .float16:
                        buffer[index] = Self.floatFromHalfBits(loadInteger(raw, position, UInt16.self, bigEndian))
                    case .bfloat16:
                        buffer[index] = Float(bitPattern: UInt32(loadInteger(raw, position, UInt16.self, bigEndian)) << 16)
                    case .float64:
                        buffer[index] = Float(Double(bitPattern: loadInteger(raw, position, UInt64.self, bigEndian)))
                    case .int64:
                        buffer[index] = Float(Int64(bitPattern: loadInteger(raw, position, UInt64.self, bigEndian)))
                    case .int32:
                        buffer[index] = Float(Int32(bitPattern: loadInteger(raw, position, UInt32.self, bigEndian)))
                    }
                }
                initializedCount = count
            }
        }
    }

    /// Converts an IEEE 754 binary16 bit pattern to float32 exactly, including subnormals, infinities and NaN.
    static func floatFromHalfBits(_ bits: UInt16) -> Float {
        let sign: UInt32 = UInt32(bits & 0x8000) << 16
        let exponent = Int((bits >> 10) & 0x1F)
        let mantissa = UInt32(bits & 0x03FF)

        if exponent == 0x1F {
            // Infinity (mantissa 0) or NaN; the NaN payload moves to the top of the float32 mantissa.
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        if exponent == 0 {
            // Zero or subnormal: mantissa × 2^-24, exact in float32 because mantissa < 2^10.
            let magnitude = Float(mantissa) * 0x1p-24
            return sign == 0 ? magnitude : -magnitude
        }
        let floatExponent = UInt32(exponent - 15 + 127)
        return Float(bitPattern: sign | (floatExponent << 23) | (mantissa << 13))
    }
}

private func loadInteger<T: FixedWidthInteger>(_ raw: UnsafeRawBufferPointer, _ offset: Int, _ type: T.Type, _ bigEndian: Bool) -> T {
    let stored = raw.loadUnaligned(fromByteOffset: offset, as: T.self)
    return bigEndian ? T(bigEndian: stored) : T(littleEndian: stored)
}
