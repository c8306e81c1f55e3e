/// A value on the unpickler's stack or in its memo.
///
/// Globals are only names: the unpickler never imports or calls anything. What a call (REDUCE),
/// a BUILD or a persistent ID means is decided by a `PickleDelegate`, which returns `.custom` objects.
enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case tuple(PickleTuple)
    case list(PickleList)
    case dict(PickleDict)
    /// A class or function named by GLOBAL or STACK_GLOBAL, e.g. `collections.OrderedDict`.
    case global(module: String, name: String)
    /// An object made by the delegate, e.g. a tensor.
    case custom(PickleCustomObject)

    /// Python-style type name for error messages.
    var typeName: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .tuple: return "tuple"
        case .list: return "list"
        case .dict: return "dict"
        case .global(let module, let name): return "global \(module).\(name)"
        case .custom(let object): return object.typeName
        }
    }

    /// Container nesting depth: 0 for scalars, 1 for an empty or flat container.
    var depth: Int {
        switch self {
        case .tuple(let tuple): return tuple.depth
        case .list(let list): return list.depth
        case .dict(let dict): return dict.depth
        case .custom: return 1
        default: return 0
        }
    }
}

protocol PickleCustomObject: AnyObject {
    var typeName: String { get }
}

final class PickleTuple {
    let items: [PickleValue]
    let depth: Int

    init(_ items: [PickleValue]) {
        self.items = items
        self.depth = 1 + (items.map(\.depth).max() ?? 0)
    }
}

/// A list; `isNested` is set once it is stored inside another container, after which the
/// unpickler rejects changes to it so that the recorded `depth` of every container stays exact.
final class PickleList {
    var items: [PickleValue] = []
    var depth = 1
    var isNested = false
}

/// A dict that keeps insertion order, as Python's dict does.
final class PickleDict {
    private(set) var entries: [(key: PickleValue, value: PickleValue)] = []
    private var indexByKey: [PickleKey: Int] = [:]
    var depth = 1
    var isNested = false

    /// Stores a value; an existing key keeps its position and gets the new value, as in Python.
    /// Returns false for a key type that this dict does not support.
    func set(_ key: PickleValue, _ value: PickleValue) -> Bool {
        let hashableKey: PickleKey
        switch key {
        case .string(let string): hashableKey = .string(string)
        case .int(let integer): hashableKey = .int(integer)
        case .bool(let flag): hashableKey = .int(flag ? 1 : 0)
        default: return false
        }
        if let index = indexByKey[hashableKey] {
            entries[index].value = value
        } else {
            indexByKey[hashableKey] = entries.count
            entries.append((key, value))
        }
        depth = max(depth, 1 + max(key.depth, value.depth))
        return true
    }

    private enum PickleKey: Hashable {
        case string(String)
        case int(Int)
    }
}

/// A rejection from a `PickleDelegate`; the unpickler adds the file and opcode offset.
struct PickleRejection: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Gives meaning to the parts of a pickle that would run code in Python.
protocol PickleDelegate: AnyObject {
    /// Returns the value for GLOBAL/STACK_GLOBAL `module.name`, or throws if the name is not allowed.
    func resolveGlobal(module: String, name: String) throws -> PickleValue
    /// Returns the object for a BINPERSID persistent ID.
    func persistentLoad(_ id: PickleValue) throws -> PickleValue
    /// Returns the result of REDUCE, i.e. `callable(*arguments)`.
    func reduce(_ callable: PickleValue, arguments: PickleTuple) throws -> PickleValue
    /// Applies BUILD `state` to `object` (Python's `__setstate__`).
    func build(_ object: PickleValue, state: PickleValue) throws
}

/// An interpreter for the subset of the pickle protocol (protocols 2 to 5) that `torch.save` writes.
///
/// Opcode semantics follow CPython's `Lib/pickle.py` `_Unpickler`. Any other opcode is an error.
/// Stack size, memo size and container nesting are bounded, so a hostile pickle cannot exhaust memory
/// through them or overflow the call stack when nested containers are freed.
struct Unpickler {
    static let maxStackSize = 1 << 20
    static let maxMemoSize = 1 << 22
    static let maxNestingDepth = 100

    private let reader: ByteReader
    private let delegate: PickleDelegate
    private var position = 0
    /// Offset of the opcode being executed, for error messages.
    private var opcodeOffset = 0
    private var stack: [PickleValue] = []
    /// Stack heights at each open MARK; values below the innermost mark are not visible to pops.
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]

    /// `context` names the pickle in errors, e.g. `weights.pth: archive/data.pkl`.
    init(bytes: [UInt8], context: String, delegate: PickleDelegate) {
        self.reader = ByteReader(bytes, context: context)
        self.delegate = delegate
    }

    private func error(_ message: String) -> MNCError {
        reader.error("offset \(opcodeOffset): \(message)")
    }

    /// Runs the pickle up to STOP and returns the value it produced.
    mutating func load() throws -> PickleValue {
        while true {
            opcodeOffset = position
            let opcode = try readUInt8("opcode")
            do {
                if let result = try execute(opcode) {
                    return result
                }
            } catch let rejection as PickleRejection {
                throw error(rejection.message)
            }
        }
    }

    /// Executes one opcode; returns the final value for STOP, nil otherwise.
    private mutating func execute(_ opcode: UInt8) throws -> PickleValue? {
        switch opcode {
        case 0x80:  // PROTO
            let version = try readUInt8("PROTO version")
            guard version >= 2 && version <= 5 else {
                throw error("unsupported pickle protocol \(version) (supported: 2 to 5)")
            }
        case 0x95:  // FRAME: only a read-ahead hint, the opcodes inside are read as usual.
            let length = try reader.uint64(at: position, field: "FRAME length")
            position += 8
            guard length <= UInt64(reader.count - position) else {
                throw error("FRAME length \(length) runs past the end of the pickle")
            }
        case UInt8(ascii: "}"):  // EMPTY_DICT
            try push(.dict(PickleDict()))
        case UInt8(ascii: "]"):  // EMPTY_LIST
            try push(.list(PickleList()))
        case UInt8(ascii: ")"):  // EMPTY_TUPLE
            try push(.tuple(PickleTuple([])))
        case UInt8(ascii: "("):  // MARK
            guard marks.count < Self.maxStackSize else {
                throw error("more than \(Self.maxStackSize) open MARKs")
            }
            marks.append(stack.count)
        case UInt8(ascii: "t"):  // TUPLE
            try push(try makeTuple(try popToMark()))
        case 0x85, 0x86, 0x87:  // TUPLE1, TUPLE2, TUPLE3
            var items: [PickleValue] = []
            for _ in 0..<Int(opcode - 0x84) {
                items.insert(try pop(), at: 0)
            }
            try push(try makeTuple(items))
        case UInt8(ascii: "s"):  // SETITEM
            let value = try pop()
            let key = try pop()
            try setItems(in: try top(), [key, value])
        case UInt8(ascii: "u"):  // SETITEMS
            let items = try popToMark()
            try setItems(in: try top(), items)
        case UInt8(ascii: "a"):  // APPEND
            let value = try pop()
            try append(to: try top(), [value])
        case UInt8(ascii: "e"):  // APPENDS
            let items = try popToMark()
            try append(to: try top(), items)
        case UInt8(ascii: "X"):  // BINUNICODE
            try push(.string(try readString(length: Int(try readUInt32("BINUNICODE length")))))
        case 0x8D:  // BINUNICODE8
            let length = try reader.int64AsSize(at: position, field: "BINUNICODE8 length")
            position += 8
            try push(.string(try readString(length: length)))
        case 0x8C:  // SHORT_BINUNICODE
            try push(.string(try readString(length: Int(try readUInt8("SHORT_BINUNICODE length")))))
        case UInt8(ascii: "J"):  // BININT: signed 32-bit
            try push(.int(Int(Int32(bitPattern: try readUInt32("BININT value")))))
        case UInt8(ascii: "K"):  // BININT1: unsigned 8-bit
            try push(.int(Int(try readUInt8("BININT1 value"))))
        case UInt8(ascii: "M"):  // BININT2: unsigned 16-bit
            let value = try reader.uint16(at: position, field: "BININT2 value")
            position += 2
            try push(.int(Int(value)))
        case 0x8A:  // LONG1
            try push(.int(try readLong1()))
        case UInt8(ascii: "G"):  // BINFLOAT: big-endian IEEE 754 double
            let littleEndianBits = try reader.uint64(at: position, field: "BINFLOAT value")
            position += 8
            try push(.float(Double(bitPattern: littleEndianBits.byteSwapped)))
        case 0x88:  // NEWTRUE
            try push(.bool(true))
        case 0x89:  // NEWFALSE
            try push(.bool(false))
        case UInt8(ascii: "N"):  // NONE
            try push(.none)
        case UInt8(ascii: "q"):  // BINPUT
            try memoize(at: Int(try readUInt8("BINPUT index")))
        case UInt8(ascii: "r"):  // LONG_BINPUT
            try memoize(at: Int(try readUInt32("LONG_BINPUT index")))
        case 0x94:  // MEMOIZE
            try memoize(at: memo.count)
        case UInt8(ascii: "h"):  // BINGET
            try pushMemo(Int(try readUInt8("BINGET index")))
        case UInt8(ascii: "j"):  // LONG_BINGET
            try pushMemo(Int(try readUInt32("LONG_BINGET index")))
        case UInt8(ascii: "c"):  // GLOBAL: "module\nname\n"
            let module = try readLine("GLOBAL module")
            let name = try readLine("GLOBAL name")
            try push(try delegate.resolveGlobal(module: module, name: name))
        case 0x93:  // STACK_GLOBAL
            let name = try pop()
            let module = try pop()
            guard case .string(let moduleName) = module, case .string(let globalName) = name else {
                throw error("STACK_GLOBAL needs two strings, got \(module.typeName) and \(name.typeName)")
            }
            try push(try delegate.resolveGlobal(module: moduleName, name: globalName))
        case UInt8(ascii: "R"):  // REDUCE
            let arguments = try pop()
            let callable = try pop()
            guard case .tuple(let argumentTuple) = arguments else {
                throw error("REDUCE arguments are a \(arguments.typeName), expected a tuple")
            }
            try push(try delegate.reduce(callable, arguments: argumentTuple))
        case UInt8(ascii: "b"):  // BUILD
            let state = try pop()
            try delegate.build(try top(), state: state)
        case UInt8(ascii: "Q"):  // BINPERSID
            let id = try pop()
            try push(try delegate.persistentLoad(id))
        case UInt8(ascii: "."):  // STOP
            return try pop()
        default:
            let printable = (0x21...0x7E).contains(opcode) ? " ('\(Character(Unicode.Scalar(opcode)))')" : ""
            throw error("unsupported pickle opcode 0x\(String(opcode, radix: 16))\(printable)")
        }
        return nil
    }

    // MARK: - Stack and memo

    private mutating func push(_ value: PickleValue) throws {
        guard stack.count < Self.maxStackSize else {
            throw error("pickle stack exceeds \(Self.maxStackSize) items")
        }
        stack.append(value)
    }

    private var stackFloor: Int { marks.last ?? 0 }

    private mutating func pop() throws -> PickleValue {
        guard stack.count > stackFloor else {
            throw error("pickle stack underflow")
        }
        return stack.removeLast()
    }

    private func top() throws -> PickleValue {
        guard stack.count > stackFloor, let value = stack.last else {
            throw error("pickle stack underflow")
        }
        return value
    }

    private mutating func popToMark() throws -> [PickleValue] {
        guard let mark = marks.popLast() else {
            throw error("no MARK on the pickle stack")
        }
        let items = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return items
    }

    private mutating func memoize(at index: Int) throws {
        let value = try top()
        guard memo[index] != nil || memo.count < Self.maxMemoSize else {
            throw error("pickle memo exceeds \(Self.maxMemoSize) entries")
        }
        memo[index] = value
    }

    private mutating func pushMemo(_ index: Int) throws {
        guard let value = memo[index] else {
            throw error("memo index \(index) was never stored")
        }
        try push(value)
    }

    // MARK: - Containers

    private func makeTuple(_ items: [PickleValue]) throws -> PickleValue {
        try checkNesting(items)
        items.forEach(markNested)
        return .tuple(PickleTuple(items))
    }

    private func setItems(in target: PickleValue, _ items: [PickleValue]) throws {
        guard case .dict(let dict) = target else {
            throw error("SETITEM(S) target is a \(target.typeName), expected a dict")
        }
        guard items.count % 2 == 0 else {
            throw error("SETITEMS has an odd number of items (\(items.count))")
        }
        try checkNesting(items)
        items.forEach(markNested)
        guard !dict.isNested else {
            throw error("pickle changes a dict after storing it in another container, which is not supported")
        }
        for index in stride(from: 0, to: items.count, by: 2) {
            guard dict.set(items[index], items[index + 1]) else {
                throw error("dict key of type \(items[index].typeName) is not supported")
            }
        }
    }

    private func append(to target: PickleValue, _ items: [PickleValue]) throws {
        guard case .list(let list) = target else {
            throw error("APPEND(S) target is a \(target.typeName), expected a list")
        }
        try checkNesting(items)
        items.forEach(markNested)
        // Checked after marking the items, so appending a list to itself is rejected here too.
        guard !list.isNested else {
            throw error("pickle changes a list after storing it in another container, which is not supported")
        }
        list.items.append(contentsOf: items)
        list.depth = max(list.depth, 1 + (items.map(\.depth).max() ?? 0))
    }

    private func checkNesting(_ items: [PickleValue]) throws {
        let deepest = items.map(\.depth).max() ?? 0
        guard deepest < Self.maxNestingDepth else {
            throw error("containers nested deeper than \(Self.maxNestingDepth) levels")
        }
    }

    private func markNested(_ value: PickleValue) {
        switch value {
        case .list(let list): list.isNested = true
        case .dict(let dict): dict.isNested = true
        default: break
        }
    }

    // MARK: - Operand reading

    private mutating func readUInt8(_ subject: String) throws -> UInt8 {
        let value = try reader.uint8(at: position, field: subject)
        position += 1
        return value
    }

    private mutating func readUInt32(_ subject: String) throws -> UInt32 {
        let value = try reader.uint32(at: position, field: subject)
        position += 4
        return value
    }

    private mutating func readString(length: Int) throws -> String {
        let utf8 = try reader.slice(offset: position, count: length, field: "string of \(length) bytes")
        guard let string = String(validating: utf8, as: UTF8.self) else {
            throw error("string is not valid UTF-8")
        }
        position += length
        return string
    }

    /// Reads up to the next newline, for the text operands of GLOBAL.
    private mutating func readLine(_ subject: String) throws -> String {
        guard let newline = reader.bytes[position...].firstIndex(of: 0x0A) else {
            throw error("\(subject) has no terminating newline")
        }
        let line = try readString(length: newline - position)
        position += 1
        return line
    }

    /// LONG1: a length byte, then that many bytes of little-endian two's complement.
    private mutating func readLong1() throws -> Int {
        let length = Int(try readUInt8("LONG1 length"))
        guard length <= 8 else {
            throw error("LONG1 integer of \(length) bytes does not fit in 64 bits")
        }
        let bytes = try reader.slice(offset: position, count: length, field: "LONG1 value")
        position += length
        guard let last = bytes.last else {
            return 0
        }
        // Sign-extend from the top byte, then shift the bytes in from most to least significant.
        var value: UInt64 = last & 0x80 != 0 ? UInt64.max : 0
        for byte in bytes.reversed() {
            value = (value << 8) | UInt64(byte)
        }
        return Int(Int64(bitPattern: value))
    }
}
