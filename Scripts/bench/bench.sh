#!/usr/bin/env bash
# Time the MobileNets that mnc compiles against ONNX Runtime and OpenVINO on this machine, in
# one run, and write the figures to BENCHMARKS.md. Run as `make bench`, or as
# `bash Scripts/bench/bench.sh` from any directory.
#
# The script builds the release mnc and measures the single-thread FMA peak (fma_peak.c).
# For each network it compiles one classifier executable per thread count T with BENCH_CFLAGS
# and `mnc compile --threads T`, and records the arena size, the MACs and the .text size of the
# network's single-thread object file. Then it times REPEATS rounds: each runs every executable's
# `--bench N --threads T` once and then peers.py once, which times the peers on the ONNX export
# of the same network in the virtual environment build/bench-venv (created and filled from PyPI
# by this script). Every latency is the lowest of the REPEATS medians, and the page also lists
# the fastest single run. A peer that fails to install or run is reported in the table, and the
# benchmark goes on.
#
# Needs: swift, cc (gcc), size (binutils), python3 with venv and pip for the peers. On 2 cores,
# with mnc built and the peers installed, it takes about 5 minutes. Installing the peers adds
# about 2.5 minutes (measured with an earlier version of this script).

set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 1

SWIFT=${SWIFT:-swift}
CC=${CC:-cc}
MNC=.build/release/mnc
SHARED=${SHARED:-../shared/data}
OUT=build/bench
VENV=build/bench-venv
PAGE=BENCHMARKS.md
BENCH_CFLAGS="-O3 -march=native -std=c99"
REPEATS=5
# One thread and all cores (mnc compile builds for at most 64 threads).
CORES=$(nproc 2> /dev/null || echo 1)
[ "$CORES" -gt 64 ] 2> /dev/null && CORES=64
THREAD_COUNTS=(1)
[ "$CORES" -gt 1 ] 2> /dev/null && THREAD_COUNTS+=("$CORES")
PEERS=(onnxruntime openvino)
NETWORKS=(mobilenet_v2 mobilenet_v3_large mobilenet_v3_small)

declare -A TITLE=([mobilenet_v2]="MobileNetV2" [mobilenet_v3_large]="MobileNetV3-Large"
                  [mobilenet_v3_small]="MobileNetV3-Small")
# The reference-data case, ONNX file stem and run count per network. Smaller networks get
# more runs, so each process run takes about 1.5 s at ~1 ms to ~7 ms per inference.
declare -A CASE=([mobilenet_v2]=mobilenet_v2_1.0_224 [mobilenet_v3_large]=mobilenet_v3_large_1.0_224
                 [mobilenet_v3_small]=mobilenet_v3_small_1.0_224)
declare -A RUNS=([mobilenet_v2]=200 [mobilenet_v3_large]=400 [mobilenet_v3_small]=1000)

# Results, keyed by "network", "network threads" or "peer network threads". A latency is a number of
# milliseconds or a "failed: ..." / "skipped: ..." text. OURS and PEER hold the lowest median,
# OURS_MIN and PEER_MIN the fastest single run. ALL_CHANNELS is the lowest median of mnc's
# executable built with -DKERNELS_ALL_CHANNELS, whose GEMMs skip no zero input channel.
declare -A OURS OURS_MIN ALL_CHANNELS ARENA MACS TEXT WEIGHTS PEER PEER_MIN VERSION

log() { printf '== %s\n' "$*" >&2; }

is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

# Print an integer with thousands separators: 6021120 -> 6,021,120.
group() { sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<< "$1"; }

# Print the last non-empty line of a log file, for a one-line failure reason.
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-160; }

started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the run (1, 5, 15 min): $load_before"

log "building the release mnc"
if ! "$SWIFT" build -c release >&2; then
    log "error: 'swift build -c release' failed; see the output above"
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"

# --- FMA peak -------------------------------------------------------------------------------
log "measuring the single-thread FMA peak"
peak_gflops=""
if "$CC" -O2 -march=native -std=c99 Scripts/bench/fma_peak.c -o "$OUT/fma_peak" 2> "$OUT/fma_peak.log" &&
    "$OUT/fma_peak" > "$OUT/fma_peak.txt" 2>> "$OUT/fma_peak.log"; then
    # The peak is the faster of the AVX-512 and AVX2 loops.
    peak_gflops=$(awk '$2 == "GFLOPS" && $3 > best { best = $3 } END { if (best > 0) print best }' "$OUT/fma_peak.txt")
    cat "$OUT/fma_peak.txt" >&2
else
    log "FMA peak not measured: $(last_line "$OUT/fma_peak.log")"
fi

# A mid-gray 224×224 PPM: the classifier needs an image. The latency depends on the pixel
# values only through the projections' input channels that are zero in a whole band. In these
# networks their random BatchNorm statistics fix those channels for almost any input: the
# peers' seeded normal input and this image differ by under 1 % of the projection work.
printf 'P6\n224 224\n255\n' > "$OUT/gray.ppm"
head -c $((224 * 224 * 3)) /dev/zero | tr '\0' '\200' >> "$OUT/gray.ppm"

# --- peers' environment ----------------------------------------------------------------------
peers_skipped=""
if [ ! -d "$SHARED/onnx" ]; then
    peers_skipped="skipped: $SHARED not found"
    log "$SHARED not found: the peers are skipped (they need the ONNX files there)"
elif ! "$VENV/bin/python" -c "import numpy, onnxruntime, openvino" 2> /dev/null; then
    log "installing numpy, onnxruntime and openvino into $VENV"
    if ! python3 -m venv "$VENV" > "$OUT/pip.log" 2>&1; then
        peers_skipped="failed: python3 -m venv failed: $(last_line "$OUT/pip.log")"
    else
        # One package at a time, so that one that fails to install leaves the others usable;
        # peers.py then reports the missing one as failed.
        for package in numpy onnxruntime openvino; do
            "$VENV/bin/pip" install --disable-pip-version-check "$package" >> "$OUT/pip.log" 2>&1 ||
                log "pip install $package failed: $(last_line "$OUT/pip.log")"
        done
        "$VENV/bin/python" -c "import numpy" 2> /dev/null ||
            peers_skipped="failed: numpy did not install: $(last_line "$OUT/pip.log")"
    fi
fi
[ -n "$peers_skipped" ] && log "peers: $peers_skipped"

# Set ARRAY[KEY] to VALUE unless its current figure is lower. A "failed: ..." figure
# stays, except the placeholder "failed: no result...", which the first figure replaces.
keep_lower() {
    local -n figures=$1
    local current=${figures[$2]}
    if [[ $current == "failed: no result"* ]] ||
        { is_number "$current" && awk -v a="$3" -v b="$current" 'BEGIN { exit !(a < b) }'; }; then
        figures[$2]=$3
    fi
}

# True when a figure is a failure from an earlier step or round, not the "no result" placeholder.
has_failed() { [[ $1 == "failed: "* && $1 != "failed: no result" ]]; }

# Run the classifier in directory $1 once with --bench ($network, $runs, $threads), append its
# output to the log $2, and print its "median X ms over N runs (min Y ms, max Z ms, T thread)" line.
bench_line() {
    timeout 300 "$1/$network" "$OUT/gray.ppm" --top 1 --bench "$runs" --threads "$threads" 2>> "$2" |
        tee -a "$2" | grep '^median '
}

# Run one round of peers.py on the current network ($model, $network, $runs, $directory) and
# merge its figures into PEER and PEER_MIN. A peer that fails in any round stays failed.
time_peers_round() {
    local version_flag=() status reason kind first second third rest median minimum peer threads
    [ -z "$versions_read" ] && version_flag=(--versions)
    timeout 600 "$VENV/bin/python" Scripts/bench/peers.py --model "$model" --name "$network" \
        --threads "${THREAD_COUNTS[@]}" --runs "$runs" --repeats 1 "${version_flag[@]}" \
        > "$directory/peers.txt" 2>> "$directory/peers.log"
    status=$?
    cat "$directory/peers.txt" >> "$directory/peers-all.txt"
    while read -r kind first second third rest; do
        case $kind in
            version) VERSION[$first]="$second${third:+ $third}${rest:+ $rest}"; versions_read=yes ;;
            result)
                read -r median minimum <<< "$rest"
                keep_lower PEER "$first $second $third" "$median"
                keep_lower PEER_MIN "$first $second $third" "$minimum"
                ;;
            failed)
                PEER[$first $second $third]="failed: $rest"
                PEER_MIN[$first $second $third]="failed: $rest"
                ;;
        esac
    done < "$directory/peers.txt"
    if [ "$status" -ne 0 ]; then
        reason="peers.py exited with status $status: $(last_line "$directory/peers.log")"
        [ "$status" -eq 124 ] && reason="peers.py timed out after 600 s"
        log "$network: $reason"
        for peer in "${PEERS[@]}"; do
            for threads in "${THREAD_COUNTS[@]}"; do
                if [[ ${PEER[$peer $network $threads]} == "failed: no result from peers.py" ]]; then
                    PEER[$peer $network $threads]="failed: $reason"
                    PEER_MIN[$peer $network $threads]="failed: $reason"
                fi
            done
        done
    fi
}

# --- networks --------------------------------------------------------------------------------
versions_read=""
for network in "${NETWORKS[@]}"; do
    spec=Graphs/$network.mnet
    case_name=${CASE[$network]}
    runs=${RUNS[$network]}
    directory=$OUT/$network
    mkdir -p "$directory"

    check=$("$MNC" check "$spec" --json 2> "$directory/check.log")
    # --json sorts its keys, so the network's total MACs is the "macs" right after the layers.
    ARENA[$network]=$(grep -o '"arena_bytes":[0-9]*' <<< "$check" | cut -d: -f2)
    MACS[$network]=$(grep -o '\],"macs":[0-9]*' <<< "$check" | cut -d: -f2)

    weights=$SHARED/torch/$case_name/weights.safetensors
    if [ -f "$weights" ]; then
        weight_arguments=(--weights "$weights")
        WEIGHTS[$network]="state_dict (safetensors)"
    else
        weight_arguments=(--random-weights)
        WEIGHTS[$network]="random (\`--random-weights\`)"
    fi

    log "$network: compiling with CFLAGS=\"$BENCH_CFLAGS\""
    if CFLAGS=$BENCH_CFLAGS "$MNC" compile "$spec" --emit object -o "$directory/object" > "$directory/object.log" 2>&1; then
        TEXT[$network]=$(size -A "$directory/object/$network.o" | awk '$1 ~ /^\.text/ { total += $2 } END { print total }')
    else
        TEXT[$network]="failed"
        log "$network: --emit object failed: $(last_line "$directory/object.log")"
    fi

    # One executable per thread count: 1 is the default single-thread build, and a build with
    # --threads T splits every layer into T parts and runs them on a pool of T threads. Each
    # also gets a build with -DKERNELS_ALL_CHANNELS, which sums over every input channel.
    for threads in "${THREAD_COUNTS[@]}"; do
        key="$network $threads"
        OURS[$key]="failed: no result"
        OURS_MIN[$key]=${OURS[$key]}
        ALL_CHANNELS[$key]=${OURS[$key]}
        if ! CFLAGS=$BENCH_CFLAGS "$MNC" compile "$spec" "${weight_arguments[@]}" --emit executable --threads "$threads" \
            -o "$directory/executable-$threads" > "$directory/compile-$threads.log" 2>&1; then
            OURS[$key]="failed: mnc compile: $(last_line "$directory/compile-$threads.log")"
            OURS_MIN[$key]=${OURS[$key]}
        fi
        if ! CFLAGS="$BENCH_CFLAGS -DKERNELS_ALL_CHANNELS" "$MNC" compile "$spec" "${weight_arguments[@]}" --emit executable \
            --threads "$threads" -o "$directory/all-channels-$threads" > "$directory/compile-all-$threads.log" 2>&1; then
            ALL_CHANNELS[$key]="failed: mnc compile: $(last_line "$directory/compile-all-$threads.log")"
        fi
    done

    # Placeholders for the peers' figures, which the rounds replace.
    model=$SHARED/onnx/$case_name.onnx
    for peer in "${PEERS[@]}"; do
        for threads in "${THREAD_COUNTS[@]}"; do
            if [ -n "$peers_skipped" ]; then
                PEER[$peer $network $threads]=$peers_skipped
            elif [ ! -f "$model" ]; then
                PEER[$peer $network $threads]="skipped: $model not found"
            else
                PEER[$peer $network $threads]="failed: no result from peers.py"
            fi
            PEER_MIN[$peer $network $threads]=${PEER[$peer $network $threads]}
        done
    done

    # Rounds: each runs mnc's executable, then its every-channel build, once per thread count,
    # then one round of peers.py, so that a burst of load from other processes slows mnc and the
    # peers alike. An executable that fails in any round is reported as failed, like a peer.
    log "$network: $REPEATS rounds of mnc and the peers at ${THREAD_COUNTS[*]} threads"
    for ((round = 1; round <= REPEATS; round++)); do
        for threads in "${THREAD_COUNTS[@]}"; do
            key="$network $threads"
            if ! has_failed "${OURS[$key]}"; then
                line=$(bench_line "$directory/executable-$threads" "$directory/bench-$threads.log")
                median=$(sed -n 's/^median \([0-9.]*\) ms.*/\1/p' <<< "$line")
                minimum=$(sed -n 's/.*(min \([0-9.]*\) ms.*/\1/p' <<< "$line")
                if ! is_number "$median" || ! is_number "$minimum"; then
                    OURS[$key]="failed: $(last_line "$directory/bench-$threads.log")"
                    OURS_MIN[$key]=${OURS[$key]}
                else
                    keep_lower OURS "$key" "$median"
                    keep_lower OURS_MIN "$key" "$minimum"
                fi
            fi
            if ! has_failed "${ALL_CHANNELS[$key]}"; then
                line=$(bench_line "$directory/all-channels-$threads" "$directory/bench-all-$threads.log")
                median=$(sed -n 's/^median \([0-9.]*\) ms.*/\1/p' <<< "$line")
                if is_number "$median"; then
                    keep_lower ALL_CHANNELS "$key" "$median"
                else
                    ALL_CHANNELS[$key]="failed: $(last_line "$directory/bench-all-$threads.log")"
                fi
            fi
        done
        [ -z "$peers_skipped" ] && [ -f "$model" ] && time_peers_round
    done
    for threads in "${THREAD_COUNTS[@]}"; do
        log "$network: mnc on $threads thread(s) ${OURS[$network $threads]} ms (lowest of $REPEATS medians over" \
            "$runs runs), fastest run ${OURS_MIN[$network $threads]} ms"
    done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))

# --- report ----------------------------------------------------------------------------------
# A latency cell: "3.612", or the failure text cut to 100 characters with any "|", which would
# end the table cell, replaced. The full text is in build/bench/NETWORK/*.log and peers.txt.
cell() {
    local text=${1//|//}
    if [ "${#text}" -gt 100 ]; then
        text="${text:0:97}..."
    fi
    printf '%s' "$text"
}

# The ratio ours / peer to two decimals, or "—" when either side has no figure.
ratio() {
    if is_number "$1" && is_number "$2"; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else
        printf '—'
    fi
}

# Print the latency table of one statistic: OURS PEER (lowest median) or OURS_MIN PEER_MIN
# (fastest run), given as the names of the arrays.
latency_table() {
    local -n our_figures=$1 peer_figures=$2
    local network threads ours ort ov
    echo "| network | threads | mnc (ms) | ONNX Runtime (ms) | OpenVINO (ms) | mnc / ONNX Runtime | mnc / OpenVINO |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for network in "${NETWORKS[@]}"; do
        for threads in "${THREAD_COUNTS[@]}"; do
            ours=${our_figures[$network $threads]}
            ort=${peer_figures[onnxruntime $network $threads]}
            ov=${peer_figures[openvino $network $threads]}
            echo "| ${TITLE[$network]} | $threads | $(cell "$ours") | $(cell "$ort") | $(cell "$ov") |" \
                "$(ratio "$ours" "$ort") | $(ratio "$ours" "$ov") |"
        done
    done
}

# Print two table cells for MACS multiply-accumulates in LATENCY ms: the GFLOP/s reached
# (2 FLOP per MAC) and its fraction of the FMA peak, or "—" where a figure is missing.
throughput() {
    if ! is_number "$1" || ! is_number "$2"; then
        printf '— | —'
    elif ! is_number "$peak_gflops"; then
        awk -v m="$1" -v t="$2" 'BEGIN { printf "%.1f | —", 2 * m / t * 1e-6 }'
    else
        awk -v m="$1" -v t="$2" -v p="$peak_gflops" \
            'BEGIN { g = 2 * m / t * 1e-6; printf "%.1f | %.1f %%", g, 100 * g / p }'
    fi
}

commit=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
git diff --quiet HEAD -- Sources Package.swift Scripts/bench 2> /dev/null ||
    commit="$commit (with uncommitted changes in Sources or Scripts/bench)"
model_name=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
cores=$(nproc)
flags=""
for flag in avx512f avx2 fma; do
    grep -qw "$flag" /proc/cpuinfo && flags="$flags $flag"
done
python_version=${VERSION[python]:-"$(python3 --version 2>&1 | cut -d' ' -f2) (system; the peers did not run)"}

{
    echo "# Benchmarks"
    echo
    echo "Latency of one 224×224 float32 inference, batch 1: the lowest of $REPEATS medians (see below),"
    echo "measured by \`make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC') in $elapsed s. Lower is better; a"
    echo "ratio below 1 means mnc is faster."
    echo
    latency_table OURS PEER
    echo
    echo "mnc's T-thread rows run the classifier built with \`mnc compile --threads T\` on a pool of T"
    echo "threads; the 1-thread rows are the default single-thread build. The peers' $CORES-thread rows"
    echo "use all $CORES cores as well."
    echo
    echo "mnc's 1×1 projections skip the input channels that are zero in a whole band of rows. These"
    echo "networks have random weights and BatchNorm statistics, which leave many of the projections'"
    echo "input channels zero for every input (about half in MobileNetV2); a trained network has fewer (on the"
    echo "TFLite MobileNetV2 with four photographs, about 10 % of the projections' input values). The same"
    echo "classifiers built with \`-DKERNELS_ALL_CHANNELS\`, which sum over every channel, measured"
    echo "in the same rounds (lowest median):"
    echo
    echo "| network | threads | mnc (ms) | mnc, every channel (ms) | every channel / ONNX Runtime | every channel / OpenVINO |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for network in "${NETWORKS[@]}"; do
        for threads in "${THREAD_COUNTS[@]}"; do
            all=${ALL_CHANNELS[$network $threads]}
            echo "| ${TITLE[$network]} | $threads | $(cell "${OURS[$network $threads]}") | $(cell "$all") |" \
                "$(ratio "$all" "${PEER[onnxruntime $network $threads]}") | $(ratio "$all" "${PEER[openvino $network $threads]}") |"
        done
    done
    echo
    echo "The fastest single inference of all runs, the same runs as above. On a loaded machine it"
    echo "shows an inference that no other process interrupted, so it varies less with the load"
    echo "than the median:"
    echo
    latency_table OURS_MIN PEER_MIN
    echo
    echo "| network | MACs | GFLOP/s, median | FMA peak, median | GFLOP/s, fastest | FMA peak, fastest | arena (bytes) | code .text (bytes) | weights |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for network in "${NETWORKS[@]}"; do
        macs=${MACS[$network]:-}
        arena=${ARENA[$network]:-}
        text=${TEXT[$network]:-}
        echo "| ${TITLE[$network]} | $(group "${macs:-—}") |" \
            "$(throughput "$macs" "${OURS[$network 1]}") |" \
            "$(throughput "$macs" "${OURS_MIN[$network 1]}") |" \
            "$(group "${arena:-—}") | $(group "${text:-—}") | ${WEIGHTS[$network]} |"
    done
    echo
    echo "## How it was measured"
    echo
    echo "- Command: \`make bench\` (\`Scripts/bench/bench.sh\`)."
    echo "- Machine: $model_name, $cores cores, CPU flags:${flags:- none of avx512f, avx2, fma}."
    echo "  Load average (1, 5, 15 min) before the run: $load_before; after: $load_after."
    if awk -v before="${load_before%% *}" -v after="${load_after%% *}" 'BEGIN { exit !(before < 0.3 && after < 1.3) }'; then
        echo "  The machine was otherwise idle: the load after the run is the benchmark's own."
    else
        echo "  The machine was not idle: other processes ran during the measurement, which slows"
        echo "  every column, the peers' $CORES-thread runs most (they need all cores)."
    fi
    if is_number "$peak_gflops"; then
        echo "- FMA peak: $peak_gflops GFLOP/s float32 on one thread, measured by \`Scripts/bench/fma_peak.c\`"
        echo "  (12 independent FMA chains, best of 200 rounds of 2 to 4 ms:" \
            "$(awk '{ printf "%s%s %s GFLOP/s", (NR > 1 ? ", " : ""), ($1 == "avx512" ? "AVX-512" : "AVX2"), $3 }' "$OUT/fma_peak.txt");" \
            "the peak is the faster)."
        echo "  The fraction of peak is MACs × 2 FLOP / latency / peak, at mnc's 1-thread median and fastest run;"
        echo "  the MACs are the network's, including those of the zero channels that mnc skips."
    else
        echo "- FMA peak: not measured ($(last_line "$OUT/fma_peak.log"))."
    fi
    echo "- mnc: the torchvision-layout specs in \`Graphs/\` at 224×224, compiled with"
    echo "  \`mnc compile SPEC --emit executable --threads T\`, CC=$CC, CFLAGS=\"$BENCH_CFLAGS\", and run with"
    echo "  \`--threads T\` for T in ${THREAD_COUNTS[*]}. Each figure is the"
    echo "  lowest of $REPEATS process runs of the executable's \`--bench N\` median (N = ${RUNS[mobilenet_v2]},"
    echo "  ${RUNS[mobilenet_v3_large]} and ${RUNS[mobilenet_v3_small]} for V2, V3-Large and V3-Small), timed inside the"
    echo "  executable around the network's run function after 10 warm-up runs. The fastest run is"
    echo "  the executable's \`min\` over all $REPEATS process runs."
    echo "  Code size: the \`.text\` sections of \`NAME.o\` from \`--emit object\` (no weights), same flags."
    echo "  Arena: \`arena_bytes\` of \`mnc check SPEC --json\`, the single-thread build's (a \`--threads N\`"
    echo "  build's is larger: each part has its own buffers); MACs: its \`macs\`."
    echo "- Peers: the ONNX export of the same torchvision networks (BatchNorm folded into the"
    echo "  convolutions), run by \`Scripts/bench/peers.py\` on one seeded random input. ONNX Runtime:"
    echo "  CPU execution provider, \`intra_op_num_threads\` = threads, \`inter_op_num_threads\` = 1,"
    echo "  sequential execution, all graph optimizations, input and output bound once (I/O binding)."
    echo "  OpenVINO: CPU plugin, \`INFERENCE_NUM_THREADS\` = threads, \`PERFORMANCE_HINT\` = LATENCY,"
    echo "  \`INFERENCE_PRECISION_HINT\` = f32. Each figure is the lowest of $REPEATS medians over the same N"
    echo "  as mnc, each after 20 warm-up runs; the fastest run is the minimum over all rounds. A time is"
    echo "  one Python call, so it includes the bindings' call overhead."
    echo "- Rounds: the $REPEATS rounds of each network alternate between mnc and the peers. A round runs"
    echo "  mnc's executable (then its every-channel build) once per thread count, then one \`peers.py\` process that loads each peer"
    echo "  at each thread count and times them one after the other, so a burst of load from other"
    echo "  processes slows mnc and the peers alike."
    echo "- Versions: mnc $commit; $("$CC" --version | head -n 1); $("$SWIFT" --version 2>&1 | grep -m1 -o 'Swift version [^ ]*');"
    echo "  Python $python_version; onnxruntime ${VERSION[onnxruntime]:-not run};" \
        "openvino ${VERSION[openvino]:-not run}; numpy ${VERSION[numpy]:-not run}."
} > "$PAGE"

cat "$PAGE"
log "wrote $PAGE in $elapsed s"
