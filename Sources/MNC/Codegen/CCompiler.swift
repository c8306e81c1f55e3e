import Foundation

/// The system C toolchain as the environment selects it: `CC` (default `cc`), `CFLAGS`
/// (default `-O2 -std=c99 -Wall -Wextra`; when set, it replaces the defaults) and `AR`
/// (default `ar`). `CC`, `CFLAGS` and `AR` are split at whitespace, without shell quoting.
public struct CCompiler {
    public var command: [String]
    public var flags: [String]
    public var archiver: [String]

    public static let defaultFlags = ["-O2", "-std=c99", "-Wall", "-Wextra"]

    public init(command: [String] = ["cc"], flags: [String] = CCompiler.defaultFlags, archiver: [String] = ["ar"]) {
        self.command = command
        self.flags = flags
        self.archiver = archiver
    }

    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> CCompiler {
        func words(_ key: String) -> [String]? {
            guard let value = environment[key] else { return nil }
            let words = value.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
            return words.isEmpty ? nil : words
        }
        return CCompiler(command: words("CC") ?? ["cc"], flags: words("CFLAGS") ?? defaultFlags,
                         archiver: words("AR") ?? ["ar"])
    }

    /// Compiles C sources into one object file. Several sources are compiled as one
    /// translation unit that includes them, so the object contains all their symbols.
    public func compileObject(sources: [String], output: String, extraFlags: [String] = []) throws {
        try withUnitySource(sources) { unit in
            try run(command + flags + extraFlags + ["-c", unit, "-o", output], describing: "compiling \(describe(sources))")
        }
    }

    /// Compiles and links C sources into a shared library (`-shared -fPIC`, linked with -lm).
    public func linkSharedLibrary(sources: [String], output: String, extraFlags: [String] = []) throws {
        try run(command + flags + extraFlags + ["-fPIC", "-shared"] + sources + ["-o", output, "-lm"],
                describing: "linking \(output)")
    }

    /// Compiles and links C sources into an executable, with `-lm` and the given libraries.
    public func linkExecutable(sources: [String], output: String, extraFlags: [String] = [], libraries: [String] = []) throws {
        try run(command + flags + extraFlags + sources + ["-o", output] + libraries.map { "-l\($0)" } + ["-lm"],
                describing: "linking \(output)")
    }

    /// Creates a static library (`ar rcs`) from object files, replacing an existing one.
    public func archive(objects: [String], output: String) throws {
        if FileManager.default.fileExists(atPath: output) {
            try? FileManager.default.removeItem(atPath: output)
        }
        try run(archiver + ["rcs", output] + objects, tool: archiver.joined(separator: " "), describing: "archiving \(output)")
    }

    private func describe(_ sources: [String]) -> String {
        sources.map { URL(fileURLWithPath: $0).lastPathComponent }.joined(separator: ", ")
    }

    private func withUnitySource(_ sources: [String], _ body: (String) throws -> Void) throws {
        if sources.count == 1 {
            try body(sources[0])
            return
        }
        let directory = try makeTemporaryDirectory(prefix: "mnc-unit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let unit = directory + "/unit.c"
        let text = sources.map { "#include \"\(URL(fileURLWithPath: $0).standardizedFileURL.path)\"\n" }.joined()
        try writeFile(unit, Array(text.utf8))
        try body(unit)
    }

    private func run(_ arguments: [String], tool: String? = nil, describing action: String) throws {
        let toolName = tool ?? command.joined(separator: " ")
        let (status, output) = try runProcess(arguments)
        guard status == 0 else {
            // env(1) exits with 127 when it cannot find the program.
            if status == 127 && output.contains("No such file or directory") {
                throw MNCError("C toolchain command '\(toolName)' not found: install it or set CC (or AR) to a compiler on PATH")
            }
            throw MNCError("'\(toolName)' failed \(action): \(firstErrorLine(output, status: status))")
        }
    }
}

/// Returns the line of a compiler's output that best explains a failure: the first line that
/// mentions an error, else the first non-empty line, else the exit status.
func firstErrorLine(_ output: String, status: Int32) -> String {
    let lines = output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    if let line = lines.first(where: { $0.contains("error") }) ?? lines.first {
        return line
    }
    return "exit status \(status) and no message"
}

/// Runs a program found on PATH and returns its exit status and its standard output and
/// standard error, interleaved.
func runProcess(_ arguments: [String], currentDirectory: String? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    if let currentDirectory {
        process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory)
    }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    process.standardInput = FileHandle.nullDevice
    do {
        try process.run()
    } catch {
        throw MNCError("cannot start '\(arguments.first ?? "")': \(error.localizedDescription)")
    }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Writes bytes to a file, replacing it; the error names the path and the system's reason.
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    guard let file = fopen(path, "wb") else {
        throw MNCError("cannot write '\(path)': \(String(cString: strerror(errno)))")
    }
    let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    let failed = written != bytes.count || fflush(file) != 0
    let reason = String(cString: strerror(errno))
    fclose(file)
    if failed {
        throw MNCError("cannot write '\(path)': \(reason)")
    }
}

/// Creates a fresh directory under the system's temporary directory.
func makeTemporaryDirectory(prefix: String) throws -> String {
    var template = Array((NSTemporaryDirectory() + "/\(prefix)-XXXXXX").utf8CString)
    guard let created = template.withUnsafeMutableBufferPointer({ buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }) else {
        throw MNCError("cannot create a temporary directory in '\(NSTemporaryDirectory())': \(String(cString: strerror(errno)))")
    }
    return String(cString: created)
}
