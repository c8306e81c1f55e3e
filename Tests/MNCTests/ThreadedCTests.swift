import Foundation
import XCTest
@testable import MNC

/// Threaded builds of the generated C (`mnc compile --threads N`): logits against the reference
/// interpreter, the pool API, sanitizers, the classifier's `--threads` and the static split.
final class ThreadedCTests: XCTestCase {
    let compiler = CCompiler(command: ["cc"])

    /// One threaded run: the code is generated for `threads` threads and runs on a pool of
    /// `pool` threads. The driver also runs `NAME_run` and fails unless both logits are equal bit
    /// for bit.
    struct ThreadedCase {
        var label: String
        var graph: Graph
        var threads: Int
        var pool: Int
        var flags: [String] = []
    }

    /// Runs the cases two at a time and checks max |Δ| ≤ 1e-4 · max |logit| against the
    /// interpreter on the unoptimized graph. `optimize` turns each case's graph into the one
    /// that is compiled. The C compiles with -Werror (on top of -Wall -Wextra), so a warning fails.
    func checkParity(_ cases: [ThreadedCase], optimize: @escaping (Graph) throws -> Graph = { try MNC.optimize($0) },
                     file: StaticString = #filePath, line: UInt = #line) throws {
        let prepared = try cases.map { threadedCase -> (ThreadedCase, [Float], [Float]) in
            let input = randomInput(count: threadedCase.graph.nodes[0].elementCount)
            return (threadedCase, input, try Interpreter(graph: threadedCase.graph).run(input: input))
        }
        let results = concurrentMap(prepared) { threadedCase, input, _ in
            try runGeneratedC(graph: try optimize(threadedCase.graph), input: input, inputLayout: .nchw, compiler: self.compiler,
                              extraFlags: ["-Werror"] + threadedCase.flags, threads: threadedCase.threads, poolThreads: threadedCase.pool)
        }
        for ((threadedCase, _, expected), result) in zip(prepared, results) {
            let name = "\(threadedCase.label), \(threadedCase.threads) parts on \(threadedCase.pool) threads \(threadedCase.flags.joined(separator: " "))"
            switch result {
            case .failure(let error):
                XCTFail("\(name): \(error)", file: file, line: line)
            case .success(let actual):
                XCTAssertEqual(actual.count, expected.count, name, file: file, line: line)
                XCTAssertTrue(actual.allSatisfy(\.isFinite), "\(name): non-finite logits", file: file, line: line)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), name, file: file, line: line)
            }
        }
    }

    func spec(_ name: String, _ width: Double, _ height: Int, _ imageWidth: Int) throws -> Graph {
        varianceKeepingWeights(try loadSpec(name, SpecOverrides(widthMultiplier: width, inputHeight: height, inputWidth: imageWidth, classes: 10)))
    }

    // MARK: - Parity with the interpreter

    /// Every spec in Graphs/ at odd sizes, on 2, 3 and 4 threads. The last layers of V3-Large
    /// and V3-Small have fewer rows than threads; V2 at 97 has 49 rows after the first layer,
    /// which gives every part several bands. TF-V2 runs its 4 parts on 3 threads, so one thread
    /// runs two; every driver also runs all parts on one thread (NAME_run).
    func testParityEverySpec() throws {
        try checkParity([
            ThreadedCase(label: "v1 0.25 65x65", graph: try spec("mobilenet_v1", 0.25, 65, 65), threads: 3, pool: 3),
            ThreadedCase(label: "v2 0.5 97x97", graph: try spec("mobilenet_v2", 0.5, 97, 97), threads: 2, pool: 2),
            ThreadedCase(label: "v3-large 0.5 75x61", graph: try spec("mobilenet_v3_large", 0.5, 75, 61), threads: 4, pool: 4),
            ThreadedCase(label: "v3-small 0.5 57x57", graph: try spec("mobilenet_v3_small", 0.5, 57, 57), threads: 3, pool: 3),
            ThreadedCase(label: "tf-v1 0.25 64x64", graph: try spec("tf_mobilenet_v1", 0.25, 64, 64), threads: 2, pool: 2),
            ThreadedCase(label: "tf-v2 0.35 65x65", graph: try spec("tf_mobilenet_v2", 0.35, 65, 65), threads: 4, pool: 3),
            // 32 pixels leave 1×1 maps, whose fused blocks have a ring of one row.
            ThreadedCase(label: "v3-small 0.75 32x32", graph: try spec("mobilenet_v3_small", 0.75, 32, 32), threads: 2, pool: 2),
        ])
    }

    /// Unfused graphs (-O0) take the threaded BatchNorm, activation, add, linear and direct
    /// convolution kernels. Without weight packing the fused blocks run stage by stage, and
    /// without the squeeze-excitation fusion the squeeze-excitation runs on one thread.
    func testParityUnfusedAndPartialPipelines() throws {
        let v3 = try spec("mobilenet_v3_small", 0.35, 49, 41)
        try checkParity([ThreadedCase(label: "v3-small -O0", graph: v3, threads: 2, pool: 2)],
                        optimize: { try MNC.optimize($0, level: 0) })
        try checkParity([ThreadedCase(label: "v3-small without packing", graph: v3, threads: 3, pool: 3)],
                        optimize: { try MNC.optimize($0, disabled: ["pack-weights"]) })
        try checkParity([ThreadedCase(label: "v3-small without SE fusion", graph: v3, threads: 2, pool: 2)],
                        optimize: { try MNC.optimize($0, disabled: ["fuse-squeeze-excite"]) })
    }

    /// The fused-block test graphs: a stem on a planar input with SAME padding, 5×5 kernels,
    /// squeeze-excitations that scale the weights and the depthwise output, tall and strided maps.
    /// The rare forms add a channel scale, grouped and strided convolutions and an unfused BatchNorm.
    func testParityFusedBlockAndRareForms() throws {
        var cases = PerformanceKernelTests.fusedBlockGraphs().map { label, graph in
            ThreadedCase(label: label, graph: varianceKeepingWeights(graph), threads: 3, pool: 3)
        }
        // On 80 rows the parts share few rows, so this block's squeeze-excitation streams.
        var tall = KernelGraphBuilder(channels: 5, height: 80, width: 9)
        let first = tall.pointwise(from: 0, outChannels: 8, activation: .relu)
        let last = PerformanceKernelTests.appendBlock(&tall, from: first, expansion: 4, kernel: 3, stride: 1,
                                                      padding: Padding(top: 1, left: 1, bottom: 1, right: 1), outChannels: 8, squeeze: 6)
        let tallGraph = tall.finish(from: last)
        let fused = try XCTUnwrap(try optimize(tallGraph).nodes.first { $0.op.mnemonic == "fused_block" && $0.parameter("se.fc1.weight") != nil })
        guard case .fusedBlock(let block) = fused.op else { return XCTFail("not a fused block") }
        XCTAssertEqual(threadedBlockSchedule(fused, block, parts: 2)?.wholeTensors, false)
        cases.append(ThreadedCase(label: "tall 80x9 with squeeze-excitation", graph: varianceKeepingWeights(tallGraph), threads: 2, pool: 2))
        cases.append(ThreadedCase(label: "rare forms", graph: varianceKeepingWeights(rareFormsGraph(layout: .nhwc)), threads: 2, pool: 2))
        // Whole channels of zeros, which the projections skip, on streaming and whole-tensor blocks.
        var zeroChannels = varianceKeepingWeights(PerformanceKernelTests.zeroChannelGraph())
        XCTAssertGreaterThan(PerformanceKernelTests.zeroChannels(&zeroChannels), 0)
        for threads in [2, 3] {
            cases.append(ThreadedCase(label: "zero channels", graph: zeroChannels, threads: threads, pool: threads))
        }
        try checkParity(cases)
    }

    /// The stem graph has streaming blocks with both squeeze-excitation forms and a partial last
    /// band per part on 3 threads. ThreadSanitizer runs in `testPoolAPIAndConcurrentPools`.
    func testParityUnderAddressAndUndefinedSanitizers() throws {
        let graphs = Dictionary(uniqueKeysWithValues: PerformanceKernelTests.fusedBlockGraphs())
        let stem = try XCTUnwrap(graphs["stem 17x23"])
        try checkParity([ThreadedCase(label: "stem 17x23", graph: varianceKeepingWeights(stem), threads: 3, pool: 3,
                                      flags: CBackendTests.sanitizerFlags)])
    }

    // MARK: - Generated files

    /// The parity tests compile the vector-extension tier with GCC and -Werror. Here Clang checks
    /// the AVX-512, AVX2 and plain C tiers of a fused and an unfused threaded build.
    func testThreadedCompilesWithoutWarningsInClang() throws {
        guard (try? runProcess(["clang", "--version"]))?.status == 0 else { throw XCTSkip("clang not found") }
        let directory = try makeTemporaryDirectory(prefix: "mnc-threaded-warnings")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var sources: [String] = []
        for level in [0, 2] {
            let graph = try optimize(try loadSpec("mobilenet_v3_large"), level: level)
            let generated = try generateC(graph, name: "large_O\(level)", threads: 3)
            for file in generated.files {
                try writeFile(directory + "/" + file.name, file.contents)
            }
            sources.append(directory + "/" + generated.names.sourceFile)
        }
        let jobs = sources.flatMap { source in
            [[], ["-mavx2", "-mfma"], ["-mavx512f"], ["-DKERNELS_SCALAR"]].map { ["clang", "-fsyntax-only", "-std=c99", "-Wall", "-Wextra", "-Werror"] + $0 + [source] }
        }
        for (job, result) in zip(jobs, concurrentMap(jobs) { try runProcess($0) }) {
            let command = job.joined(separator: " ")
            switch result {
            case .failure(let error):
                XCTFail("\(command): \(error)")
            case .success(let (status, output)):
                XCTAssertEqual(status, 0, "\(command):\n\(output)")
                XCTAssertEqual(output, "", command)
            }
        }
    }

    /// The single-thread build has no threading code, and it is what `generateC` writes by default.
    func testSingleThreadSourceHasNoThreads() throws {
        let graph = try optimize(try loadSpec("mobilenet_v3_small", SpecOverrides(widthMultiplier: 0.5, inputHeight: 64, inputWidth: 64, classes: 10)))
        let single = try generateC(graph, threads: 1)
        XCTAssertFalse(single.source.contains("pthread"))
        XCTAssertFalse(single.header.contains("pthread"))
        XCTAssertFalse(single.source.contains("thread_work"))
        XCTAssertEqual(single.source, try generateC(graph).source)
        XCTAssertEqual(single.threads, 1)

        let threaded = try generateC(graph, threads: 3)
        XCTAssertTrue(threaded.header.contains("#include <pthread.h>"))
        XCTAssertTrue(threaded.header.contains("#define MOBILENET_V3_SMALL_MAX_THREADS 3 "))
        XCTAssertTrue(threaded.header.contains("int mobilenet_v3_small_run_threads(mobilenet_v3_small_threads *pool,"))
        XCTAssertEqual(threaded.threads, 3)
    }

    /// Each part of a fused block has its own ring and band buffer, so the arena grows with the
    /// thread count.
    func testArenaGrowsWithThreads() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2", SpecOverrides(widthMultiplier: 0.35, inputHeight: 64, inputWidth: 64, classes: 10)))
        let sizes = try [1, 2, 4].map { try generateC(graph, threads: $0).arenaSize }
        XCTAssertLessThan(sizes[0], sizes[1])
        XCTAssertLessThan(sizes[1], sizes[2])
    }

    func testInvalidThreadCount() {
        let graph = rareFormsGraph(layout: .nchw)
        for threads in [0, maximumCThreads + 1] {
            XCTAssertThrowsError(try generateC(graph, threads: threads), "\(threads)") { error in
                XCTAssertTrue("\(error)".contains("invalid thread count \(threads)"), "\(error)")
            }
        }
    }

    // MARK: - Static split

    func testPartBounds() {
        XCTAssertEqual(partBounds(7, parts: 2), [0, 3, 7])
        XCTAssertEqual(partBounds(2, parts: 4), [0, 0, 1, 1, 2])
        XCTAssertEqual(partBounds(112, parts: 2), [0, 56, 112])
    }

    /// 49 pixels of 1280 channels split best by column panels; 3136 pixels of 24 by rows.
    func testGEMMSplitChoice() throws {
        let avx512 = try XCTUnwrap(pointwiseTileShapes.first)
        XCTAssertEqual(chooseGEMMSplit(pixels: 49, outputChannels: 1280, tile: avx512, tileRows: avx512.rows(forPixels: 49), parts: 2), .panels)
        XCTAssertEqual(chooseGEMMSplit(pixels: 3136, outputChannels: 24, tile: avx512, tileRows: avx512.rows(forPixels: 3136), parts: 2), .rows)
    }

    /// The 7×7 blocks of MobileNetV2 on 2 threads: rows 0..<3 and 3..<7. Part 1's 3×3 windows start
    /// at expanded row 2, so streaming parts would expand rows 2 and 3 twice, 9 rows for 7, and
    /// the block runs on whole tensors. On 56×56 the parts expand 58 rows for 56 and stream.
    func testBlockScheduleSplitsRows() throws {
        let graph = try optimize(try loadSpec("mobilenet_v2"))
        func schedule(height: Int) throws -> ThreadedBlockSchedule {
            let node = try XCTUnwrap(graph.nodes.first { $0.op.mnemonic == "fused_block" && $0.shape[2] == height && $0.inputs.count == 2 })
            guard case .fusedBlock(let block) = node.op else { throw MNCError("node '\(node.name)' is not a fused block") }
            return try XCTUnwrap(threadedBlockSchedule(node, block, parts: 2))
        }
        let small = try schedule(height: 7)
        XCTAssertEqual(small.outputRows, [0, 3, 7])
        XCTAssertEqual(small.firstExpandedRows, [0, 2])
        XCTAssertEqual(small.endExpandedRows, [4, 7])
        XCTAssertTrue(small.wholeTensors)
        XCTAssertEqual(small.partFloats, 0)

        let large = try schedule(height: 56)
        XCTAssertEqual(large.outputRows, [0, 28, 56])
        XCTAssertEqual(large.firstExpandedRows, [0, 27])
        XCTAssertEqual(large.endExpandedRows, [29, 56])
        XCTAssertFalse(large.wholeTensors)
        XCTAssertEqual(large.scratchFloats, 2 * large.partFloats)
    }

    // MARK: - Pool API

    /// A C driver checks the pool's error codes, restarts a pool, and runs two pools with their
    /// own arenas at the same time from two threads, each result bit for bit equal to NAME_run.
    /// It runs once plainly and once under ThreadSanitizer. The network is the stem graph, whose
    /// squeeze-excitations synchronize inside the block.
    func testPoolAPIAndConcurrentPools() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-pools")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let graphs = Dictionary(uniqueKeysWithValues: PerformanceKernelTests.fusedBlockGraphs())
        let graph = varianceKeepingWeights(try XCTUnwrap(graphs["stem 17x23"]))
        let generated = try generateC(try optimize(graph), name: "net", threads: 3)
        for file in generated.files {
            try writeFile(directory + "/" + file.name, file.contents)
        }

        let input = randomInput(count: graph.nodes[0].elementCount, seed: 5)
        try writeFile(directory + "/input.f32", littleEndianBytes(input))
        try writeFile(directory + "/pools.c", Array(poolDriverSource.utf8))
        let sources = ["pools.c", "net.c", "net_weights.c"].map { directory + "/" + $0 }
        let builds: [(String, [String])] = [("plain", ["-pthread"]), ("tsan", ["-pthread", "-fsanitize=thread", "-g"])]
        let results = concurrentMap(builds) { build -> (Int32, String) in
            let executable = directory + "/pools_" + build.0
            try self.compiler.linkExecutable(sources: sources, output: executable, extraFlags: build.1)
            return try runProcess([executable, directory + "/input.f32", directory + "/\(build.0).f32"])
        }

        let expected = try Interpreter(graph: graph).run(input: input)
        for (build, result) in zip(builds, results) {
            switch result {
            case .failure(let error):
                XCTFail("\(build.0): \(error)")
            case .success(let (status, output)):
                XCTAssertEqual(status, 0, "\(build.0): \(output)")
                XCTAssertTrue(output.contains("pools: identical results"), "\(build.0): \(output)")
                let actual = try readFloats(directory + "/\(build.0).f32")
                XCTAssertEqual(actual.count, expected.count, build.0)
                XCTAssertLessThanOrEqual(maxAbsDifference(actual, expected), 1e-4 * maxAbs(expected), build.0)
            }
        }
    }

    // MARK: - Command line

    /// The classifier of a 2-thread build runs on 1 or 2 threads with the same classes, reports
    /// the thread count with --bench, and rejects 3; a 1-thread build rejects 2.
    func testClassifierThreadsOption() throws {
        let directory = try makeTemporaryDirectory(prefix: "mnc-classifier-threads")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let options = ["--width-multiplier", "0.35", "--resolution", "48", "--classes", "10", "--random-weights", "--emit", "executable"]
        var errors = ""
        let output = CommandOutput(write: { _ in }, writeError: { errors += $0 })
        XCTAssertEqual(runCommandLine(["compile", specPath("mobilenet_v2")] + options + ["--threads", "2", "-o", directory + "/two"], output: output), 0, errors)
        XCTAssertEqual(runCommandLine(["compile", specPath("mobilenet_v2")] + options + ["-o", directory + "/one"], output: output), 0, errors)
        var image = Array("P6\n5 7\n255\n".utf8)
        for index in 0..<(5 * 7 * 3) { image.append(UInt8(index * 7 % 256)) }
        try writeFile(directory + "/image.ppm", image)
        let two = directory + "/two/mobilenet_v2", one = directory + "/one/mobilenet_v2", picture = directory + "/image.ppm"

        let (singleStatus, single) = try runProcess([two, picture, "--threads", "1", "--json"])
        XCTAssertEqual(singleStatus, 0, single)
        let (pooledStatus, pooled) = try runProcess([two, picture, "--json"])
        XCTAssertEqual(pooledStatus, 0, pooled)
        XCTAssertEqual(single, pooled)

        let (benchStatus, bench) = try runProcess([two, picture, "--bench", "3", "--top", "1"])
        XCTAssertEqual(benchStatus, 0, bench)
        XCTAssertTrue(bench.contains("over 3 runs"), bench)
        XCTAssertTrue(bench.contains(", 2 threads)"), bench)

        let (tooManyStatus, tooMany) = try runProcess([two, picture, "--threads", "3"])
        XCTAssertEqual(tooManyStatus, 2, tooMany)
        XCTAssertTrue(tooMany.contains("error: invalid --threads 3: this executable runs on at most 2 threads"), tooMany)
        let (singleBuildStatus, singleBuild) = try runProcess([one, picture, "--threads", "2"])
        XCTAssertEqual(singleBuildStatus, 2, singleBuild)
        XCTAssertTrue(singleBuild.contains("runs on at most 1 thread;"), singleBuild)
        XCTAssertTrue(singleBuild.contains("mnc compile --threads 2"), singleBuild)
        // Beyond what mnc compile builds, the message suggests no rebuild.
        let (beyondStatus, beyond) = try runProcess([two, picture, "--threads", "65"])
        XCTAssertEqual(beyondStatus, 2, beyond)
        XCTAssertTrue(beyond.contains("mnc compile builds for at most 64"), beyond)
        XCTAssertFalse(beyond.contains("--threads 65'"), beyond)
    }

    func testLLVMBackendRejectsThreads() {
        var errors = ""
        let status = runCommandLine(["compile", specPath("mobilenet_v2"), "--backend", "llvm", "--threads", "2", "-o", "/tmp/unused"],
                                    output: CommandOutput(write: { _ in }, writeError: { errors += $0 }))
        XCTAssertEqual(status, 1)
        XCTAssertTrue(errors.hasPrefix("error: --threads 2: the LLVM backend builds single-threaded code"), errors)
        XCTAssertEqual(errors.filter { $0 == "\n" }.count, 1, errors)
    }

    func testRunRejectsThreadsOutsideCEngine() throws {
        var errors = ""
        let status = runCommandLine(["run", specPath("mobilenet_v2"), "--weights", "/nonexistent.safetensors", "--threads", "2",
                                     "--engine", "interpreter"],
                                    output: CommandOutput(write: { _ in }, writeError: { errors += $0 }))
        XCTAssertEqual(status, 1)
        XCTAssertTrue(errors.contains("--threads 2 applies to --engine c only"), errors)
    }

    func testCompileRejectsInvalidThreads() {
        for value in ["0", "65", "two"] {
            var errors = ""
            let status = runCommandLine(["compile", specPath("mobilenet_v2"), "--threads", value, "-o", "/tmp/unused"],
                                        output: CommandOutput(write: { _ in }, writeError: { errors += $0 }))
            XCTAssertEqual(status, 1, value)
            XCTAssertTrue(errors.contains("invalid value '\(value)' for --threads"), errors)
        }
    }
}

/// The C driver of the pool test: `pools INPUT OUTPUT` for the network `net` built for 3 threads.
private let poolDriverSource = #"""
#define _POSIX_C_SOURCE 200112L
#include "net.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static void *allocate(size_t size)
{
    void *block = NULL;
    if (posix_memalign(&block, 64, size > 0 ? size : 64) != 0) FAIL("out of memory");
    return block;
}

typedef struct {
    net_threads *pool;
    const float *input;
    float *output;
    void *arena;
    int status;
} job;

static void *run_job(void *argument)
{
    job *work = argument;
    for (int i = 0; i < 10 && work->status == NET_OK; ++i) {
        work->status = net_run_threads(work->pool, net_weights, work->input, work->output, work->arena);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) FAIL("usage: pools INPUT OUTPUT");
    float *input = allocate(NET_INPUT_SIZE * sizeof(float));
    FILE *file = fopen(argv[1], "rb");
    if (file == NULL || fread(input, sizeof(float), NET_INPUT_SIZE, file) != NET_INPUT_SIZE) FAIL("cannot read %s", argv[1]);
    fclose(file);
    float *expected = allocate(NET_OUTPUT_SIZE * sizeof(float)), *output = allocate(NET_OUTPUT_SIZE * sizeof(float));
    void *arena = allocate(NET_ARENA_SIZE);
    if (net_run(net_weights, input, expected, arena) != NET_OK) FAIL("net_run failed");

    net_threads *pool = allocate(sizeof(net_threads));
    memset(pool, 0, sizeof(net_threads));
    if (net_threads_start(NULL, 2) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL pool started");
    if (net_threads_start(pool, 0) != NET_ERROR_THREAD_COUNT) FAIL("0 threads accepted");
    if (net_threads_start(pool, NET_MAX_THREADS + 1) != NET_ERROR_THREAD_COUNT) FAIL("too many threads accepted");
    if (net_run_threads(pool, net_weights, input, output, arena) != NET_ERROR_POOL_STATE) FAIL("unstarted pool ran");
    if (net_run_threads(NULL, net_weights, input, output, arena) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL pool ran");

    if (net_threads_start(pool, 2) != NET_OK) FAIL("net_threads_start(2) failed");
    if (net_run_threads(pool, NULL, input, output, arena) != NET_ERROR_NULL_ARGUMENT) FAIL("NULL weights accepted");
    if (net_run_threads(pool, net_weights, input, output, (char *)arena + 4) != NET_ERROR_MISALIGNED_ARGUMENT) FAIL("misaligned arena accepted");
    if (net_run_threads(pool, net_weights, input, output, arena) != NET_OK) FAIL("net_run_threads failed");
    if (memcmp(output, expected, NET_OUTPUT_SIZE * sizeof(float)) != 0) FAIL("2 threads differ from net_run");
    net_threads_stop(pool);
    net_threads_stop(pool);
    if (net_run_threads(pool, net_weights, input, output, arena) != NET_ERROR_POOL_STATE) FAIL("stopped pool ran");

    /* Two pools of 3 and 2 threads, each with its own arena, run at the same time. */
    net_threads *pools[2] = {pool, allocate(sizeof(net_threads))};
    if (net_threads_start(pools[0], 3) != NET_OK || net_threads_start(pools[1], 2) != NET_OK) FAIL("restart failed");
    job jobs[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; ++i) {
        jobs[i] = (job){pools[i], input, allocate(NET_OUTPUT_SIZE * sizeof(float)), allocate(NET_ARENA_SIZE), NET_OK};
        if (pthread_create(&threads[i], NULL, run_job, &jobs[i]) != 0) FAIL("pthread_create failed");
    }
    for (int i = 0; i < 2; ++i) {
        pthread_join(threads[i], NULL);
        net_threads_stop(pools[i]);
        if (jobs[i].status != NET_OK) FAIL("pool %d: net_run_threads returned %d", i, jobs[i].status);
        if (memcmp(jobs[i].output, expected, NET_OUTPUT_SIZE * sizeof(float)) != 0) FAIL("pool %d differs from net_run", i);
    }

    file = fopen(argv[2], "wb");
    if (file == NULL || fwrite(expected, sizeof(float), NET_OUTPUT_SIZE, file) != NET_OUTPUT_SIZE || fclose(file) != 0) FAIL("cannot write %s", argv[2]);
    printf("pools: identical results\n");
    return 0;
}
"""#
