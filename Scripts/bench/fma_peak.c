/*
 * Measures the single-thread float32 FMA throughput of this machine, the peak that
 * `make bench` divides each network's achieved FLOP/s by.
 *
 * Each kernel runs ACCUMULATORS independent dependency chains of `acc = acc * m + c`. One
 * chain is bound by the FMA latency (4 cycles on current x86 cores), so 2 FMA ports need at
 * least 8 chains in flight; 12 leaves headroom and still fits in the 16 ymm registers of AVX2.
 * With m = 1 - 2^-20 and c small the values converge to c / (1 - m), so there are no
 * denormals, infinities or NaNs to slow the loop down.
 *
 * Build with -O2 -march=native. Prints one line per instruction set the compiler enabled:
 *   avx512 GFLOPS X.X
 *   avx2 GFLOPS X.X
 * Each figure is the best of ROUNDS timed rounds of ITERATIONS steps, 2 to 4 ms each on a
 * 3.5 GHz core with 2 FMA ports. The rounds are short so that on a loaded machine some of
 * them run without being preempted. Exits with status 1 when
 * neither AVX-512F nor AVX2 with FMA is enabled.
 */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ACCUMULATORS 12 /* the number of chains that FMA_ROW writes out */
#define ROUNDS 200
#define ITERATIONS 1000000L

static volatile float sink;

/* One step of all 12 chains, written out so the accumulators stay in registers (a loop over
 * an array of vectors compiles to loads and stores through memory at -O2). */
#define FMA_ROW(fma) \
    do { \
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c); \
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c); \
        a8 = fma(a8, m, c); a9 = fma(a9, m, c); a10 = fma(a10, m, c); a11 = fma(a11, m, c); \
    } while (0)

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#if defined(__AVX512F__)
/* Returns the seconds taken by `iterations` × ACCUMULATORS 16-lane FMAs. */
static double time_avx512(long iterations) {
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
    const __m512 m = _mm512_set1_ps(1.0f - 1.0f / 1048576.0f);
    const __m512 c = _mm512_set1_ps(1e-6f);
    double start = now_seconds();
    for (long i = 0; i < iterations; i++) {
        FMA_ROW(_mm512_fmadd_ps);
    }
    double elapsed = now_seconds() - start;
    __m512 total = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    total = _mm512_add_ps(total, _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    total = _mm512_add_ps(total, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    sink = _mm512_reduce_add_ps(total);
    return elapsed;
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
/* Returns the seconds taken by `iterations` × ACCUMULATORS 8-lane FMAs. */
static double time_avx2(long iterations) {
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
    __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
    __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9), a10 = _mm256_set1_ps(10), a11 = _mm256_set1_ps(11);
    const __m256 m = _mm256_set1_ps(1.0f - 1.0f / 1048576.0f);
    const __m256 c = _mm256_set1_ps(1e-6f);
    double start = now_seconds();
    for (long i = 0; i < iterations; i++) {
        FMA_ROW(_mm256_fmadd_ps);
    }
    double elapsed = now_seconds() - start;
    __m256 total = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    total = _mm256_add_ps(total, _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    total = _mm256_add_ps(total, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float lanes[8];
    _mm256_storeu_ps(lanes, total);
    sink = lanes[0] + lanes[7];
    return elapsed;
}
#endif

/* Returns the best GFLOP/s over ROUNDS rounds; one FMA on `lanes` floats is 2 × lanes FLOP. */
static double best_gflops(double (*kernel)(long), int lanes) {
    double best = 0;
    kernel(50 * ITERATIONS); /* warm-up: lets the core reach its vector clock */
    for (int round = 0; round < ROUNDS; round++) {
        double seconds = kernel(ITERATIONS);
        double gflops = 2.0 * lanes * ACCUMULATORS * (double)ITERATIONS / seconds * 1e-9;
        if (gflops > best) {
            best = gflops;
        }
    }
    return best;
}

int main(void) {
    int measured = 0;
#if defined(__AVX512F__)
    printf("avx512 GFLOPS %.1f\n", best_gflops(time_avx512, 16));
    measured++;
#endif
#if defined(__AVX2__) && defined(__FMA__)
    printf("avx2 GFLOPS %.1f\n", best_gflops(time_avx2, 8));
    measured++;
#endif
    if (!measured) {
        fprintf(stderr, "error: built without AVX-512F or AVX2+FMA; compile with -march=native on an x86-64 host that has them\n");
        return 1;
    }
    return 0;
}
