import Foundation

/// Runs a graph through the generated C: generates the code for `graph` as given (no
/// optimization pass runs here), compiles it with a small driver program, and runs that on
/// `input` with the graph's bound weights. `input` is in `inputLayout` and is reordered when
/// the network reads the other layout. Returns the logits.
///
/// Builds are cached in the temporary directory under a hash of the generated code, the
/// compiler and the flags, so repeated runs of the same network and flags compile once.
/// The driver fills the arena with NaN before the run, so a kernel that reads a value before
/// it is written shows up in the logits.
///
/// With `threads` above 1 the code is generated for that many threads and runs on a pool of
/// `poolThreads` threads (default `threads`); the driver also runs `NAME_run` and fails unless
/// both logits are bit for bit the same.
/// NOTE: nothing removes old cache entries; each is one small executable.
public func runGeneratedC(graph: Graph, input: [Float], inputLayout: TensorLayout,
                          compiler: CCompiler = .fromEnvironment(), extraFlags: [String] = [],
                          threads: Int = 1, poolThreads: Int? = nil) throws -> [Float] {
    guard !graph.constants.isEmpty || graph.nodes.allSatisfy({ $0.parameters.isEmpty }) else {
        throw MNCError("the graph has no weights bound: pass --weights FILE")
    }
    let shape = graph.inputShape
    guard input.count == graph.nodes[0].elementCount else {
        throw MNCError("input has \(input.count) values, the network expects \(graph.nodes[0].elementCount) (\(formatShape(shape)))")
    }
    let generated = try generateC(graph, threads: threads)
    let pool = poolThreads ?? threads
    guard (1...threads).contains(pool) else {
        throw MNCError("invalid pool size \(pool): the code is generated for 1...\(threads) threads")
    }
    let executable = try buildDriver(generated, compiler: compiler, extraFlags: extraFlags + (threads > 1 ? ["-pthread"] : []))

    let directory = try makeTemporaryDirectory(prefix: "mnc-run")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let weightsPath = directory + "/weights.bin", inputPath = directory + "/input.f32", outputPath = directory + "/output.f32"
    try writeFile(weightsPath, generated.weightBlob ?? [])
    let ordered = reorder(input, channels: shape[1], height: shape[2], width: shape[3], from: inputLayout, to: graph.preprocessing.layout)
    try writeFile(inputPath, littleEndianBytes(ordered))

    let (status, output) = try runProcess([executable, weightsPath, inputPath, outputPath] + (threads > 1 ? [String(pool)] : []))
    guard status == 0 else {
        throw MNCError("the generated C for '\(graph.name)' failed with exit status \(status): \(firstErrorLine(output, status: status))")
    }
    let data = try Data(contentsOf: URL(fileURLWithPath: outputPath))
    let count = graph.nodes[graph.output].elementCount
    guard data.count == count * 4 else {
        throw MNCError("the generated C for '\(graph.name)' wrote \(data.count) bytes, expected \(count * 4)")
    }
    return data.withUnsafeBytes { raw in
        (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
    }
}

/// Compiles the generated network with the driver, or returns the cached executable.
private func buildDriver(_ generated: GeneratedC, compiler: CCompiler, extraFlags: [String]) throws -> String {
    let driver = generated.threads > 1 ? threadedDriverSource(generated.names) : driverSource(generated.names)
    var hash = FNV1a64()
    for part in [compiler.command, compiler.flags, extraFlags].flatMap({ $0 }) + [generated.header, generated.source, driver] {
        hash.combine(part)
    }
    let cache = NSTemporaryDirectory() + "/mnc-c-cache"
    let executable = cache + "/" + generated.names.function + "-" + String(hash.value, radix: 16)
    if FileManager.default.isExecutableFile(atPath: executable) {
        return executable
    }
    try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)

    let directory = try makeTemporaryDirectory(prefix: "mnc-build")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try writeFile(directory + "/" + generated.names.headerFile, Array(generated.header.utf8))
    try writeFile(directory + "/" + generated.names.sourceFile, Array(generated.source.utf8))
    try writeFile(directory + "/driver.c", Array(driver.utf8))
    let built = directory + "/driver"
    try compiler.linkExecutable(sources: [directory + "/driver.c", directory + "/" + generated.names.sourceFile],
                                output: built, extraFlags: extraFlags)
    // Rename is atomic, so a concurrent run finds either no executable or a complete one.
    if rename(built, executable) != 0 {
        throw MNCError("cannot move the compiled driver to '\(executable)': \(String(cString: strerror(errno)))")
    }
    return executable
}

/// Returns a C program that runs NAME_run once: `driver WEIGHTS INPUT OUTPUT` reads the weight blob
/// and the input (raw float32) and writes the logits (raw float32).
func driverSource(_ names: CNames) -> String {
    let p = names.macro, f = names.function
    return """
    #define _POSIX_C_SOURCE 200112L
    #include "\(names.headerFile)"

    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>

    /* Reads exactly `size` bytes of `path`; returns 0 on success. */
    static int read_exactly(const char *path, void *buffer, size_t size)
    {
        FILE *file = fopen(path, "rb");
        if (file == NULL) {
            fprintf(stderr, "error: cannot open %s\\n", path);
            return 1;
        }
        size_t count = fread(buffer, 1, size, file);
        int extra = fgetc(file);
        fclose(file);
        if (count != size || extra != EOF) {
            fprintf(stderr, "error: %s does not have exactly %lu bytes\\n", path, (unsigned long)size);
            return 1;
        }
        return 0;
    }

    static void *allocate(size_t size, size_t alignment)
    {
        void *block = NULL;
        return posix_memalign(&block, alignment, size > 0 ? size : alignment) == 0 ? block : NULL;
    }

    int main(int argc, char **argv)
    {
        if (argc != 4) {
            fprintf(stderr, "usage: %s WEIGHTS INPUT OUTPUT\\n", argv[0]);
            return 2;
        }
        void *weights = allocate(\(p)_WEIGHTS_SIZE, \(p)_WEIGHTS_ALIGNMENT);
        float *input = allocate(\(p)_INPUT_SIZE * sizeof(float), 64);
        float *output = allocate(\(p)_OUTPUT_SIZE * sizeof(float), 64);
        void *arena = allocate(\(p)_ARENA_SIZE, \(p)_ARENA_ALIGNMENT);
        if (weights == NULL || input == NULL || output == NULL || arena == NULL) {
            fprintf(stderr, "error: out of memory\\n");
            return 1;
        }
        if (read_exactly(argv[1], weights, \(p)_WEIGHTS_SIZE) != 0
            || read_exactly(argv[2], input, \(p)_INPUT_SIZE * sizeof(float)) != 0) {
            return 1;
        }
        /* All-ones bytes are NaN floats: a kernel that reads the arena before writing it
           turns the logits into NaN. */
        memset(arena, 0xFF, \(p)_ARENA_SIZE);
        int status = \(f)_run(weights, input, output, arena);
        if (status != \(p)_OK) {
            fprintf(stderr, "error: \(f)_run returned %d\\n", status);
            return 1;
        }
        FILE *file = fopen(argv[3], "wb");
        if (file == NULL || fwrite(output, sizeof(float), \(p)_OUTPUT_SIZE, file) != \(p)_OUTPUT_SIZE || fclose(file) != 0) {
            fprintf(stderr, "error: cannot write %s\\n", argv[3]);
            return 1;
        }
        free(weights);
        free(input);
        free(output);
        free(arena);
        return 0;
    }

    """
}

/// Returns a C program for a threaded build: `driver WEIGHTS INPUT OUTPUT THREADS` runs
/// NAME_run_threads twice on a pool of THREADS threads and NAME_run once, each on an arena
/// filled with NaN, checks that the three logits are bit for bit the same and writes them.
func threadedDriverSource(_ names: CNames) -> String {
    let p = names.macro, f = names.function
    var text = driverSource(names)
    let start = text.range(of: "int main(int argc, char **argv)")?.lowerBound ?? text.endIndex
    text.removeSubrange(start...)
    text += """
    /* Runs the network on a pool (or on this thread when pool is NULL) on an arena of NaN. */
    static int run_once(\(f)_threads *pool, const void *weights, const float *input, float *output, void *arena)
    {
        memset(arena, 0xFF, \(p)_ARENA_SIZE);
        return pool != NULL ? \(f)_run_threads(pool, weights, input, output, arena) : \(f)_run(weights, input, output, arena);
    }

    int main(int argc, char **argv)
    {
        if (argc != 5) {
            fprintf(stderr, "usage: %s WEIGHTS INPUT OUTPUT THREADS\\n", argv[0]);
            return 2;
        }
        const int threads = atoi(argv[4]);
        void *weights = allocate(\(p)_WEIGHTS_SIZE, \(p)_WEIGHTS_ALIGNMENT);
        float *input = allocate(\(p)_INPUT_SIZE * sizeof(float), 64);
        float *outputs[3];
        for (int i = 0; i < 3; ++i) {
            outputs[i] = allocate(\(p)_OUTPUT_SIZE * sizeof(float), 64);
        }
        void *arena = allocate(\(p)_ARENA_SIZE, \(p)_ARENA_ALIGNMENT);
        \(f)_threads *pool = allocate(sizeof(\(f)_threads), 64);
        if (weights == NULL || input == NULL || outputs[0] == NULL || outputs[1] == NULL || outputs[2] == NULL
            || arena == NULL || pool == NULL) {
            fprintf(stderr, "error: out of memory\\n");
            return 1;
        }
        if (read_exactly(argv[1], weights, \(p)_WEIGHTS_SIZE) != 0
            || read_exactly(argv[2], input, \(p)_INPUT_SIZE * sizeof(float)) != 0) {
            return 1;
        }
        int status = \(f)_threads_start(pool, threads);
        if (status != \(p)_OK) {
            fprintf(stderr, "error: \(f)_threads_start(%d) returned %d\\n", threads, status);
            return 1;
        }
        for (int i = 0; i < 3 && status == \(p)_OK; ++i) {
            status = run_once(i < 2 ? pool : NULL, weights, input, outputs[i], arena);
        }
        \(f)_threads_stop(pool);
        if (status != \(p)_OK) {
            fprintf(stderr, "error: \(f)_run_threads or \(f)_run returned %d\\n", status);
            return 1;
        }
        for (int i = 1; i < 3; ++i) {
            if (memcmp(outputs[0], outputs[i], \(p)_OUTPUT_SIZE * sizeof(float)) != 0) {
                fprintf(stderr, "error: run %d on %d threads differs from the first run\\n", i, i < 2 ? threads : 1);
                return 1;
            }
        }
        FILE *file = fopen(argv[3], "wb");
        if (file == NULL || fwrite(outputs[0], sizeof(float), \(p)_OUTPUT_SIZE, file) != \(p)_OUTPUT_SIZE || fclose(file) != 0) {
            fprintf(stderr, "error: cannot write %s\\n", argv[3]);
            return 1;
        }
        free(weights);
        free(input);
        for (int i = 0; i < 3; ++i) {
            free(outputs[i]);
        }
        free(arena);
        free(pool);
        return 0;
    }

    """
    return text
}

/// Reorders a `[C, H, W]` image between NCHW and NHWC.
func reorder(_ values: [Float], channels: Int, height: Int, width: Int, from source: TensorLayout, to target: TensorLayout) -> [Float] {
    guard source != target else { return values }
    var result = [Float](repeating: 0, count: values.count)
    for c in 0..<channels {
        for y in 0..<height {
            for x in 0..<width {
                let planar = (c * height + y) * width + x
                let interleaved = (y * width + x) * channels + c
                if source == .nchw {
                    result[interleaved] = values[planar]
                } else {
                    result[planar] = values[interleaved]
                }
            }
        }
    }
    return result
}

func littleEndianBytes(_ values: [Float]) -> [UInt8] {
    var bytes = [UInt8]()
    bytes.reserveCapacity(values.count * 4)
    for value in values {
        let bits = value.bitPattern
        bytes.append(UInt8(truncatingIfNeeded: bits))
        bytes.append(UInt8(truncatingIfNeeded: bits >> 8))
        bytes.append(UInt8(truncatingIfNeeded: bits >> 16))
        bytes.append(UInt8(truncatingIfNeeded: bits >> 24))
    }
    return bytes
}

/// The 64-bit FNV-1a hash, for cache keys (not for security). Each string is followed by a
/// zero byte, so the parts ["ab", "c"] and ["a", "bc"] hash differently.
struct FNV1a64 {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func combine(_ text: String) {
        for byte in text.utf8 {
            value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
        }
        value = (value ^ 0) &* 0x0000_0100_0000_01B3
    }
}
