"""Time ONNX Runtime and OpenVINO on one ONNX model, for `make bench`.

Run with the benchmark's virtual environment (build/bench-venv):

    python peers.py --model M.onnx --name NET --threads 1 2 --runs 200 --repeats 5

Prints one line per fact, space-separated, for Scripts/bench/bench.sh to read:

    version PACKAGE VERSION
    result PEER NET THREADS MEDIAN_MS MIN_MS
    failed PEER NET THREADS REASON...

A result is the lowest of `repeats` medians, each over `runs` timed inferences after
`warmup` untimed ones, and the fastest single inference of all rounds. The rounds alternate
between the peers and thread counts, so a burst of load from other processes hits every
configuration alike. Each time is one call from Python (perf_counter_ns around it), so it
includes the binding's call overhead. A peer that cannot be imported, loaded or run gets a
`failed` line and the others still run. The exit status is 0 unless the arguments are
invalid.
"""

import argparse
import platform
import statistics
import time

import numpy as np

PEERS = ("onnxruntime", "openvino")


def one_line(error):
    """Return an exception as one line of at most 160 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 160 else text[:157] + "..."


def input_array(shape):
    """Return a seeded normal float32 input; dynamic dimensions become 1."""
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    return np.random.default_rng(0).standard_normal(dims).astype(np.float32)


def onnxruntime_runner(model, threads):
    """Return a function that runs one inference with ONNX Runtime on `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    # Binding the input and a preallocated output once keeps allocation and copies out of
    # the timed call.
    model_input = session.get_inputs()[0]
    model_output = session.get_outputs()[0]
    array = input_array(model_input.shape)
    binding = session.io_binding()
    binding.bind_cpu_input(model_input.name, array)
    output = ort.OrtValue.ortvalue_from_shape_and_type(
        [d if isinstance(d, int) and d > 0 else 1 for d in model_output.shape], np.float32)
    binding.bind_ortvalue_output(model_output.name, output)
    return lambda: session.run_with_iobinding(binding)


def openvino_runner(model, threads):
    """Return a function that runs one inference with OpenVINO's CPU plugin on `threads` threads."""
    import openvino as ov

    core = ov.Core()
    # The precision hint pins float32, because the CPU plugin may default to bf16 on CPUs with
    # native bf16 support (avx512_bf16, AMX) and every other figure here is float32.
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    })
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    if precision != ov.Type.f32:
        raise RuntimeError(f"compiled with inference precision {precision}, expected f32")
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(input_array(compiled.input(0).get_shape())))
    return request.infer


RUNNERS = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}


def time_ms(run, runs):
    """Return the median and the minimum of `runs` timed calls of `run`, in milliseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times), min(times)


def print_versions():
    print(f"version python {platform.python_version()}")
    print(f"version numpy {np.__version__}")
    for peer in PEERS:
        try:
            module = __import__(peer)
            print(f"version {peer} {module.__version__}")
        except Exception as error:  # a broken wheel raises more than ImportError
            print(f"version {peer} unavailable ({one_line(error)})")


def main():
    parser = argparse.ArgumentParser(description="Time ONNX Runtime and OpenVINO on one ONNX model.")
    parser.add_argument("--model", required=True, help="path of the .onnx file")
    parser.add_argument("--name", required=True, help="network name printed in each result line")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts to time (default: 1)")
    parser.add_argument("--runs", type=int, default=200, help="timed inferences per round (default: 200)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the lowest median counts (default: 5)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed inferences before each round (default: 20)")
    parser.add_argument("--versions", action="store_true", help="print the package versions first")
    args = parser.parse_args()
    if args.runs < 1 or args.repeats < 1 or args.warmup < 0 or min(args.threads) < 1:
        parser.error("--runs, --repeats and --threads must be at least 1, --warmup at least 0")

    if args.versions:
        print_versions()

    runners = {}
    failures = {}
    for peer in PEERS:
        for threads in args.threads:
            try:
                runners[(peer, threads)] = RUNNERS[peer](args.model, threads)
            except Exception as error:  # any failure of a peer is reported, not raised
                failures[(peer, threads)] = one_line(error)

    rounds = {key: [] for key in runners}  # (median, minimum) of each round
    for _ in range(args.repeats):
        for key, run in runners.items():
            if key in failures:
                continue
            try:
                for _ in range(args.warmup):
                    run()
                rounds[key].append(time_ms(run, args.runs))
            except Exception as error:
                failures[key] = one_line(error)

    for peer in PEERS:
        for threads in args.threads:
            key = (peer, threads)
            if key in failures:
                print(f"failed {peer} {args.name} {threads} {failures[key]}")
            else:
                lowest_median = min(median for median, _ in rounds[key])
                fastest = min(minimum for _, minimum in rounds[key])
                print(f"result {peer} {args.name} {threads} {lowest_median:.3f} {fastest:.3f}")


if __name__ == "__main__":
    main()
