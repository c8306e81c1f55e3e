/// The shared inline C helpers that the per-shape kernels call with literal arguments.
///
/// Every helper is `KERNEL_INLINE` (always inlined on GCC and Clang). The kernels pass shapes,
/// activation codes and the bias/residual flags as integer literals, so the compiler compiles
/// each call with constant bounds and folds the branches away. The helpers are written once,
/// and the compiled code is specialized per shape.
///
/// The instruction set is chosen when the generated C is compiled: AVX-512F when the compiler
/// targets it (`-mavx512f`, `-march=native` on such a CPU), else AVX2 with FMA, else plain C.
/// On GCC and Clang without those, the pointwise tile uses 16-byte vector extensions (SSE2,
/// NEON). All paths compute the same values up to float rounding.
enum CHelper: Int, CaseIterable, Comparable {
    case activation
    case pointwiseTile
    case depthwisePixel
    case convolutionPixels
    case matrixVector
    case nonzeroChannels

    static func < (a: CHelper, b: CHelper) -> Bool { a.rawValue < b.rawValue }

    /// The helpers this one calls.
    var dependencies: [CHelper] {
        switch self {
        case .activation: return []
        // The AVX2 branch of the channel list takes its lane masks from the activation helpers.
        case .pointwiseTile, .depthwisePixel, .convolutionPixels, .matrixVector, .nonzeroChannels: return [.activation]
        }
    }

    var source: String {
        switch self {
        case .activation: return activationSource
        case .pointwiseTile: return pointwiseTileSource
        case .depthwisePixel: return depthwisePixelSource
        case .convolutionPixels: return convolutionPixelsSource
        case .matrixVector: return matrixVectorSource
        case .nonzeroChannels: return nonzeroChannelsSource
        }
    }
}

/// Returns the C enumerator that selects `activation` in the helpers.
func activationConstant(_ activation: Activation) -> String {
    switch activation {
    case .identity: return "ACTIVATION_IDENTITY"
    case .relu: return "ACTIVATION_RELU"
    case .relu6: return "ACTIVATION_RELU6"
    case .hardswish: return "ACTIVATION_HARDSWISH"
    case .hardsigmoid: return "ACTIVATION_HARDSIGMOID"
    case .hardsigmoidLinear: return "ACTIVATION_HARDSIGMOID_LINEAR"
    }
}

/// Lines at the top of every generated kernel file: instruction-set selection and the inline macro.
let kernelPreambleSource = #"""
/* Instruction set of the kernels: AVX-512F or AVX2 with FMA intrinsics when the compiler
   targets them, else GCC and Clang vector extensions (16-byte vectors: SSE2, NEON, ...), else
   plain C. Defining KERNELS_SCALAR selects plain C everywhere. */
#if defined(KERNELS_SCALAR)
#elif defined(__AVX512F__)
#include <immintrin.h>
#define KERNELS_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KERNELS_AVX2 1
#elif defined(__GNUC__)
#define KERNELS_VECTOR 1
typedef float float4 __attribute__((vector_size(16)));
#endif

/* Helpers are always inlined, so the literal arguments of each call specialize them. One
   instruction set's kernels may leave another's scalar helper unused. */
#if defined(__GNUC__)
#define KERNEL_INLINE static inline __attribute__((always_inline, unused))
#elif defined(_MSC_VER)
#define KERNEL_INLINE static __forceinline
#else
#define KERNEL_INLINE static inline
#endif
"""#

private let activationSource = #"""
/* Activation codes for the helpers' `activation` argument. */
enum {
    ACTIVATION_IDENTITY,
    ACTIVATION_RELU,               /* max(x, 0) */
    ACTIVATION_RELU6,              /* min(max(x, 0), 6) */
    ACTIVATION_HARDSWISH,          /* x * min(max(x + 3, 0), 6) / 6 */
    ACTIVATION_HARDSIGMOID,        /* min(max(x + 3, 0), 6) / 6 */
    ACTIVATION_HARDSIGMOID_LINEAR  /* min(max(0.2 x + 0.5, 0), 1) */
};

/* The comparisons are false for a NaN, which passes through every activation, as it does in
   PyTorch. The vector max and min return their second operand when either is a NaN. */
KERNEL_INLINE float clamp_f32(float v, float low, float high)
{
    v = v < low ? low : v;
    return v > high ? high : v;
}

KERNEL_INLINE float activate_f32(float v, int activation)
{
    switch (activation) {
    case ACTIVATION_RELU: return v < 0.0f ? 0.0f : v;
    case ACTIVATION_RELU6: return clamp_f32(v, 0.0f, 6.0f);
    case ACTIVATION_HARDSWISH: return v * (clamp_f32(v + 3.0f, 0.0f, 6.0f) * (1.0f / 6.0f));
    case ACTIVATION_HARDSIGMOID: return clamp_f32(v + 3.0f, 0.0f, 6.0f) * (1.0f / 6.0f);
    case ACTIVATION_HARDSIGMOID_LINEAR: return clamp_f32(0.2f * v + 0.5f, 0.0f, 1.0f);
    default: return v;
    }
}

#if defined(KERNELS_AVX512)
KERNEL_INLINE __m512 activate_f32x16(__m512 v, int activation)
{
    const __m512 zero = _mm512_setzero_ps();
    const __m512 six = _mm512_set1_ps(6.0f);
    switch (activation) {
    case ACTIVATION_RELU: return _mm512_max_ps(zero, v);
    case ACTIVATION_RELU6: return _mm512_min_ps(six, _mm512_max_ps(zero, v));
    case ACTIVATION_HARDSWISH:
        return _mm512_mul_ps(v, _mm512_mul_ps(_mm512_min_ps(six, _mm512_max_ps(zero, _mm512_add_ps(v, _mm512_set1_ps(3.0f)))),
                                              _mm512_set1_ps(1.0f / 6.0f)));
    case ACTIVATION_HARDSIGMOID:
        return _mm512_mul_ps(_mm512_min_ps(six, _mm512_max_ps(zero, _mm512_add_ps(v, _mm512_set1_ps(3.0f)))),
                             _mm512_set1_ps(1.0f / 6.0f));
    case ACTIVATION_HARDSIGMOID_LINEAR:
        return _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(zero, _mm512_fmadd_ps(v, _mm512_set1_ps(0.2f), _mm512_set1_ps(0.5f))));
    default: return v;
    }
}
#elif defined(KERNELS_AVX2)
KERNEL_INLINE __m256 activate_f32x8(__m256 v, int activation)
{
    const __m256 zero = _mm256_setzero_ps();
    const __m256 six = _mm256_set1_ps(6.0f);
    switch (activation) {
    case ACTIVATION_RELU: return _mm256_max_ps(zero, v);
    case ACTIVATION_RELU6: return _mm256_min_ps(six, _mm256_max_ps(zero, v));
    case ACTIVATION_HARDSWISH:
        return _mm256_mul_ps(v, _mm256_mul_ps(_mm256_min_ps(six, _mm256_max_ps(zero, _mm256_add_ps(v, _mm256_set1_ps(3.0f)))),
                                              _mm256_set1_ps(1.0f / 6.0f)));
    case ACTIVATION_HARDSIGMOID:
        return _mm256_mul_ps(_mm256_min_ps(six, _mm256_max_ps(zero, _mm256_add_ps(v, _mm256_set1_ps(3.0f)))),
                             _mm256_set1_ps(1.0f / 6.0f));
    case ACTIVATION_HARDSIGMOID_LINEAR:
        return _mm256_min_ps(_mm256_set1_ps(1.0f), _mm256_max_ps(zero, _mm256_fmadd_ps(v, _mm256_set1_ps(0.2f), _mm256_set1_ps(0.5f))));
    default: return v;
    }
}

/* Lanes 0 ..< count of an AVX2 mask are set (all lanes for count >= 8, none for count <= 0). */
KERNEL_INLINE __m256i lane_mask_f32x8(int count)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif
"""#

/// Register tile sizes (rows = pixels, columns = output channels) of the pointwise GEMM per
/// instruction set: AVX-512 keeps up to 8 × 2 zmm accumulators (16 of 32 registers), AVX2
/// 6 × 2 ymm (12 of 16), vector extensions 6 × 2 16-byte vectors (12 of the 16 registers of
/// SSE2), and plain C a 4 × 16 array.
/// A kernel may use fewer rows than `rows` (at least `minimumRows`) when that tiles its
/// pixel count more evenly: 49 pixels are 7 tiles of 7 rather than 6 of 8 and one of 1.
struct PointwiseTileShape {
    var condition: String
    var function: String
    var rows: Int
    var minimumRows: Int
    var columns: Int

    /// Returns the row count in `minimumRows...rows` that wastes the fewest rows in the last tile
    /// (pixels rounded up to whole tiles), the largest on ties.
    func rows(forPixels pixels: Int) -> Int {
        func padded(_ rows: Int) -> Int { (pixels + rows - 1) / rows * rows }
        return (minimumRows...rows).reversed().min { padded($0) < padded($1) } ?? rows
    }
}

let pointwiseTileShapes: [PointwiseTileShape] = [
    PointwiseTileShape(condition: "defined(KERNELS_AVX512)", function: "pointwise_f32_tile8x32_avx512", rows: 8, minimumRows: 6, columns: 32),
    PointwiseTileShape(condition: "defined(KERNELS_AVX2)", function: "pointwise_f32_tile6x16_avx2", rows: 6, minimumRows: 4, columns: 16),
    PointwiseTileShape(condition: "defined(KERNELS_VECTOR)", function: "pointwise_f32_tile6x8_vector", rows: 6, minimumRows: 4, columns: 8),
    PointwiseTileShape(condition: "", function: "pointwise_f32_tile4x16_portable", rows: 4, minimumRows: 4, columns: 16),
]

private let pointwiseTileComment = """
/*
 * One register tile of a pointwise (1x1) convolution as a GEMM:
 *   y[r][j] = activation(bias[j] + sum over k of x[r][k] * w[k][j]) + residual[r][j]
 * for r < rows pixels and j < cols output channels. x rows are k_count floats apart (NHWC),
 * w rows w_stride floats (one column panel of the `io_panels` layout: [in][panel width]), y
 * and residual rows y_stride floats.
 * With ks not NULL, the sum runs over the k_used input channels ks[0] < ks[1] < ... only: the
 * caller leaves out channels whose x values are all zero, whose terms add nothing.
 * bias and residual are read only when has_bias and has_residual are non-zero.
 */
"""

/// Writes the loop over the input channels of a GEMM tile: over `ks[0 ..< k_used]` when the
/// caller passes a channel list, else over `0 ..< k_count`. `body` writes the loop body, which
/// reads the channel as `k`; it is written twice so that each loop compiles on its own.
private func emitChannelLoop(_ writer: inout CWriter, _ body: (inout CWriter) -> Void) {
    writer.open("if (ks)")
    writer.open("for (int i = 0; i < k_used; ++i)")
    writer.line("const int k = ks[i];")
    body(&writer)
    writer.close()
    writer.openElse()
    writer.openFor("k", to: "k_count")
    body(&writer)
    writer.close()
    writer.close()
}

private var pointwiseTileSource: String {
    var writer = CWriter()
    writer.lines(pointwiseTileComment.split(separator: "\n", omittingEmptySubsequences: false).map(String.init))
    let parameters = """
        (const float *restrict x, const float *restrict w,
        const float *restrict bias, const float *restrict residual, float *restrict y,
        int rows, int cols, int k_count, int w_stride, int y_stride,
        const int *restrict ks, int k_used, int has_bias, int has_residual, int activation)
        """.split(separator: "\n").map(String.init)

    // AVX-512: rows <= 8, cols <= 32 as two zmm columns; partial columns use masked loads
    // and stores, which do not touch the masked-off lanes. With FMA, a second column of exactly
    // 8 floats (cols == 24) takes a ymm FMA, which costs half a zmm FMA on CPUs that execute
    // 512-bit operations as two 256-bit halves (AMD Zen 4).
    writer.directive("#if defined(KERNELS_AVX512)")
    writer.line("KERNEL_INLINE void pointwise_f32_tile8x32_avx512" + parameters[0])
    writer.lines(parameters.dropFirst().map { "    " + $0 })
    writer.open("")
    writer.directive("#if defined(__FMA__)")
    writer.line("const int half1 = cols == 24;")
    writer.directive("#else")
    writer.line("const int half1 = 0;")
    writer.directive("#endif")
    writer.line("const int full1 = cols > 16 && !half1;")
    writer.line("const __mmask16 mask0 = (__mmask16)(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);")
    writer.line("const __mmask16 mask1 = (__mmask16)(cols >= 32 ? 0xFFFFu : cols > 16 ? (1u << (cols - 16)) - 1u : 0u);")
    writer.line("const __m512 bias0 = has_bias ? _mm512_maskz_loadu_ps(mask0, bias) : _mm512_setzero_ps();")
    writer.line("const __m512 bias1 = has_bias && full1 ? _mm512_maskz_loadu_ps(mask1, bias + 16) : _mm512_setzero_ps();")
    writer.line("const __m256 bias_half = has_bias && half1 ? _mm256_loadu_ps(bias + 16) : _mm256_setzero_ps();")
    for row in 0..<8 {
        writer.line("__m512 acc\(row)0 = bias0, acc\(row)1 = bias1;")
        writer.line("__m256 acc\(row)h = bias_half;")
    }
    emitChannelLoop(&writer) { writer in
        writer.line("const __m512 w0 = cols >= 16 ? _mm512_loadu_ps(w + k * w_stride) : _mm512_maskz_loadu_ps(mask0, w + k * w_stride);")
        writer.line("const __m512 w1 = full1 ? _mm512_maskz_loadu_ps(mask1, w + k * w_stride + 16) : _mm512_setzero_ps();")
        writer.directive("#if defined(__FMA__)")
        writer.line("const __m256 w_half = half1 ? _mm256_loadu_ps(w + k * w_stride + 16) : _mm256_setzero_ps();")
        writer.directive("#endif")
        for row in 0..<8 {
            writer.open(row == 0 ? "" : "if (rows > \(row))")
            writer.line("const __m512 xr = _mm512_set1_ps(x[\(row == 0 ? "" : "\(row) * k_count + ")k]);")
            writer.line("acc\(row)0 = _mm512_fmadd_ps(xr, w0, acc\(row)0);")
            writer.line("if (full1) acc\(row)1 = _mm512_fmadd_ps(xr, w1, acc\(row)1);")
            writer.directive("#if defined(__FMA__)")
            writer.line("if (half1) acc\(row)h = _mm256_fmadd_ps(_mm512_castps512_ps256(xr), w_half, acc\(row)h);")
            writer.directive("#endif")
            writer.close()
        }
    }
    for row in 0..<8 {
        writer.open(row == 0 ? "" : "if (rows > \(row))")
        let offset = row == 0 ? "" : " + \(row) * y_stride"
        writer.line("__m512 v0 = activate_f32x16(acc\(row)0, activation);")
        writer.line("if (has_residual) v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, residual\(offset)));")
        writer.line("_mm512_mask_storeu_ps(y\(offset), mask0, v0);")
        writer.open("if (full1)")
        writer.line("__m512 v1 = activate_f32x16(acc\(row)1, activation);")
        writer.line("if (has_residual) v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, residual\(offset) + 16));")
        writer.line("_mm512_mask_storeu_ps(y\(offset) + 16, mask1, v1);")
        writer.close()
        writer.open("if (half1)")
        writer.line("__m256 v1 = _mm512_castps512_ps256(activate_f32x16(_mm512_castps256_ps512(acc\(row)h), activation));")
        writer.line("if (has_residual) v1 = _mm256_add_ps(v1, _mm256_loadu_ps(residual\(offset) + 16));")
        writer.line("_mm256_storeu_ps(y\(offset) + 16, v1);")
        writer.close()
        writer.close()
    }
    writer.close()

    // AVX2: rows <= 6, cols <= 16 as two ymm columns; partial columns use vmaskmovps.
    writer.directive("#elif defined(KERNELS_AVX2)")
    writer.line("KERNEL_INLINE void pointwise_f32_tile6x16_avx2" + parameters[0])
    writer.lines(parameters.dropFirst().map { "    " + $0 })
    writer.open("")
    writer.line("const __m256i mask0 = lane_mask_f32x8(cols);")
    writer.line("const __m256i mask1 = lane_mask_f32x8(cols - 8);")
    writer.line("const __m256 bias0 = has_bias ? _mm256_maskload_ps(bias, mask0) : _mm256_setzero_ps();")
    writer.line("const __m256 bias1 = has_bias && cols > 8 ? _mm256_maskload_ps(bias + 8, mask1) : _mm256_setzero_ps();")
    for row in 0..<6 {
        writer.line("__m256 acc\(row)0 = bias0, acc\(row)1 = bias1;")
    }
    emitChannelLoop(&writer) { writer in
        writer.line("const __m256 w0 = cols >= 8 ? _mm256_loadu_ps(w + k * w_stride) : _mm256_maskload_ps(w + k * w_stride, mask0);")
        writer.line("const __m256 w1 = cols >= 16 ? _mm256_loadu_ps(w + k * w_stride + 8)")
        writer.line("                 : cols > 8 ? _mm256_maskload_ps(w + k * w_stride + 8, mask1) : _mm256_setzero_ps();")
        for row in 0..<6 {
            writer.open(row == 0 ? "" : "if (rows > \(row))")
            writer.line("const __m256 xr = _mm256_broadcast_ss(x\(row == 0 ? "" : " + \(row) * k_count") + k);")
            writer.line("acc\(row)0 = _mm256_fmadd_ps(xr, w0, acc\(row)0);")
            writer.line("if (cols > 8) acc\(row)1 = _mm256_fmadd_ps(xr, w1, acc\(row)1);")
            writer.close()
        }
    }
    for row in 0..<6 {
        writer.open(row == 0 ? "" : "if (rows > \(row))")
        let offset = row == 0 ? "" : " + \(row) * y_stride"
        writer.line("__m256 v0 = activate_f32x8(acc\(row)0, activation);")
        writer.line("__m256 v1 = activate_f32x8(acc\(row)1, activation);")
        writer.line("if (has_residual) v0 = _mm256_add_ps(v0, _mm256_maskload_ps(residual\(offset), mask0));")
        writer.line("if (has_residual && cols > 8) v1 = _mm256_add_ps(v1, _mm256_maskload_ps(residual\(offset) + 8, mask1));")
        writer.line("if (cols >= 8) _mm256_storeu_ps(y\(offset), v0); else _mm256_maskstore_ps(y\(offset), mask0, v0);")
        writer.line("if (cols >= 16) _mm256_storeu_ps(y\(offset) + 8, v1); else if (cols > 8) _mm256_maskstore_ps(y\(offset) + 8, mask1, v1);")
        writer.close()
    }
    writer.close()

    // Vector extensions: rows <= 6, cols <= 8 as two 4-float columns. A partial column tile
    // (cols < 8, at most one per kernel) takes the scalar loops. The epilogue runs in place
    // on y, in scalar code that the compiler vectorizes.
    writer.directive("#elif defined(KERNELS_VECTOR)")
    writer.line("KERNEL_INLINE void pointwise_f32_tile6x8_vector" + parameters[0])
    writer.lines(parameters.dropFirst().map { "    " + $0 })
    writer.open("")
    writer.open("if (cols == 8)")
    writer.line("float4 bias0 = {0.0f, 0.0f, 0.0f, 0.0f}, bias1 = bias0;")
    writer.open("if (has_bias)")
    writer.line("__builtin_memcpy(&bias0, bias, sizeof bias0);")
    writer.line("__builtin_memcpy(&bias1, bias + 4, sizeof bias1);")
    writer.close()
    for row in 0..<6 {
        writer.line("float4 acc\(row)0 = bias0, acc\(row)1 = bias1;")
    }
    emitChannelLoop(&writer) { writer in
        writer.line("float4 w0, w1;")
        writer.line("__builtin_memcpy(&w0, w + k * w_stride, sizeof w0);")
        writer.line("__builtin_memcpy(&w1, w + k * w_stride + 4, sizeof w1);")
        for row in 0..<6 {
            writer.open(row == 0 ? "" : "if (rows > \(row))")
            writer.line("const float xv = x[\(row == 0 ? "" : "\(row) * k_count + ")k];")
            writer.line("const float4 xr = {xv, xv, xv, xv};")
            writer.line("acc\(row)0 += xr * w0;")
            writer.line("acc\(row)1 += xr * w1;")
            writer.close()
        }
    }
    for row in 0..<6 {
        writer.open(row == 0 ? "" : "if (rows > \(row))")
        let offset = row == 0 ? "" : " + \(row) * y_stride"
        writer.line("__builtin_memcpy(y\(offset), &acc\(row)0, sizeof acc\(row)0);")
        writer.line("__builtin_memcpy(y\(offset) + 4, &acc\(row)1, sizeof acc\(row)1);")
        writer.close()
    }
    writer.openElse()
    writer.openFor("r", to: "rows")
    writer.openFor("j", to: "cols")
    writer.line("float sum = has_bias ? bias[j] : 0.0f;")
    emitChannelLoop(&writer) { writer in
        writer.line("sum += x[r * k_count + k] * w[k * w_stride + j];")
    }
    writer.line("y[r * y_stride + j] = sum;")
    writer.close()
    writer.close()
    writer.close()
    writer.openFor("r", to: "rows")
    writer.openFor("j", to: "cols")
    writer.line("float v = activate_f32(y[r * y_stride + j], activation);")
    writer.line("if (has_residual) v += residual[r * y_stride + j];")
    writer.line("y[r * y_stride + j] = v;")
    writer.close()
    writer.close()
    writer.close()

    // Plain C: the compiler may vectorize the j loops once inlining makes rows and cols literals.
    writer.directive("#else")
    writer.line("KERNEL_INLINE void pointwise_f32_tile4x16_portable" + parameters[0])
    writer.lines(parameters.dropFirst().map { "    " + $0 })
    writer.open("")
    writer.line("float acc[4][16];")
    writer.openFor("r", to: "rows")
    writer.openFor("j", to: "cols")
    writer.line("acc[r][j] = has_bias ? bias[j] : 0.0f;")
    writer.close()
    writer.close()
    emitChannelLoop(&writer) { writer in
        writer.line("const float *restrict wk = w + k * w_stride;")
        writer.openFor("r", to: "rows")
        writer.line("const float xv = x[r * k_count + k];")
        writer.openFor("j", to: "cols")
        writer.line("acc[r][j] += xv * wk[j];")
        writer.close()
        writer.close()
    }
    writer.openFor("r", to: "rows")
    writer.openFor("j", to: "cols")
    writer.line("float v = activate_f32(acc[r][j], activation);")
    writer.line("if (has_residual) v += residual[r * y_stride + j];")
    writer.line("y[r * y_stride + j] = v;")
    writer.close()
    writer.close()
    writer.close()
    writer.directive("#endif")
    return writer.text
}

private let depthwisePixelSource = #"""
/*
 * One output pixel of a depthwise convolution, all channels:
 *   y[c] = activation(bias[c] + sum over taps of rows[ky][column + kx][c] * w[ky][kx][c]) + residual[c]
 * over the taps ky in [ky0, ky1), kx in [kx0, kx1) that lie inside the input. rows[ky] points at
 * pixel 0 of the input row that tap row ky reads; `column` is the input column of tap kx = 0 and
 * may be negative. w is [kernel_height][kernel_width][channels] (the `hwc` layout); pixels are
 * `channels` floats apart (NHWC); y and residual point at the output pixel.
 */
#if defined(KERNELS_AVX512)
KERNEL_INLINE void depthwise_f32_pixel(const float *const *rows, const float *restrict w,
    const float *restrict bias, const float *restrict residual, float *restrict y,
    int channels, int kernel_width, int column, int ky0, int ky1, int kx0, int kx1,
    int has_bias, int has_residual, int activation)
{
    for (int c = 0; c < channels; c += 16) {
        const __mmask16 mask = (__mmask16)(channels - c >= 16 ? 0xFFFFu : (1u << (channels - c)) - 1u);
        __m512 acc = has_bias ? _mm512_maskz_loadu_ps(mask, bias + c) : _mm512_setzero_ps();
        for (int ky = ky0; ky < ky1; ++ky) {
            for (int kx = kx0; kx < kx1; ++kx) {
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, rows[ky] + ((column + kx) * channels + c)),
                                      _mm512_maskz_loadu_ps(mask, w + ((ky * kernel_width + kx) * channels + c)), acc);
            }
        }
        acc = activate_f32x16(acc, activation);
        if (has_residual) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, residual + c));
        _mm512_mask_storeu_ps(y + c, mask, acc);
    }
}
#elif defined(KERNELS_AVX2)
KERNEL_INLINE void depthwise_f32_pixel(const float *const *rows, const float *restrict w,
    const float *restrict bias, const float *restrict residual, float *restrict y,
    int channels, int kernel_width, int column, int ky0, int ky1, int kx0, int kx1,
    int has_bias, int has_residual, int activation)
{
    for (int c = 0; c < channels; c += 8) {
        const __m256i mask = lane_mask_f32x8(channels - c);
        __m256 acc = has_bias ? _mm256_maskload_ps(bias + c, mask) : _mm256_setzero_ps();
        for (int ky = ky0; ky < ky1; ++ky) {
            for (int kx = kx0; kx < kx1; ++kx) {
                acc = _mm256_fmadd_ps(_mm256_maskload_ps(rows[ky] + ((column + kx) * channels + c), mask),
                                      _mm256_maskload_ps(w + ((ky * kernel_width + kx) * channels + c), mask), acc);
            }
        }
        acc = activate_f32x8(acc, activation);
        if (has_residual) acc = _mm256_add_ps(acc, _mm256_maskload_ps(residual + c, mask));
        _mm256_maskstore_ps(y + c, mask, acc);
    }
}
#else
/* Portable: y is the accumulator, and every channel loop is contiguous and vectorizable. */
KERNEL_INLINE void depthwise_f32_pixel(const float *const *rows, const float *restrict w,
    const float *restrict bias, const float *restrict residual, float *restrict y,
    int channels, int kernel_width, int column, int ky0, int ky1, int kx0, int kx1,
    int has_bias, int has_residual, int activation)
{
    for (int c = 0; c < channels; ++c) {
        y[c] = has_bias ? bias[c] : 0.0f;
    }
    for (int ky = ky0; ky < ky1; ++ky) {
        for (int kx = kx0; kx < kx1; ++kx) {
            const float *restrict xp = rows[ky] + (column + kx) * channels;
            const float *restrict wp = w + (ky * kernel_width + kx) * channels;
            for (int c = 0; c < channels; ++c) {
                y[c] += xp[c] * wp[c];
            }
        }
    }
    for (int c = 0; c < channels; ++c) {
        float v = activate_f32(y[c], activation);
        if (has_residual) v += residual[c];
        y[c] = v;
    }
}
#endif
"""#

private let convolutionPixelsSource = #"""
/*
 * Up to 16 horizontally adjacent output pixels of a convolution with groups 1, all output
 * channels:
 *   y[p][o] = activation(bias[o] + sum over taps and i of x[p][tap][i] * w[tap][i][o]) + residual[p][o]
 * over the taps ky in [ky0, ky1), kx in [kx0, kx1), which must lie inside the input for every
 * pixel. Input channel i of tap (ky, kx) of pixel p is at x_offset + p * pixel_stride +
 * ky * row_stride + kx * column_stride + i * channel_stride. The strides make NHWC (channel
 * stride 1) and NCHW (channel stride H * W) inputs read alike. w is [kernel_height][kernel_width]
 * [in_channels][out_channels] (the `hwio` layout); y and residual point at the first output
 * pixel, whose neighbours follow out_channels floats apart (NHWC).
 */
#if defined(KERNELS_AVX512)
KERNEL_INLINE void convolution_f32_pixels(const float *restrict x, const float *restrict w,
    const float *restrict bias, const float *restrict residual, float *restrict y,
    int pixels, int pixel_stride, int in_channels, int out_channels, int kernel_width,
    int row_stride, int column_stride, int channel_stride, int x_offset,
    int ky0, int ky1, int kx0, int kx1, int has_bias, int has_residual, int activation)
{
    /* 16 accumulators hold one output-channel vector for 16 pixels when out_channels <= 16, else
       two vectors (32 channels) for 8 pixels, so each input value is broadcast once per vector group. */
    const int wide = out_channels > 16;
    const int group = wide ? 8 : 16;
    for (int p0 = 0; p0 < pixels; p0 += group) {
        const int count = pixels - p0 < group ? pixels - p0 : group;
        for (int o = 0; o < out_channels; o += 32) {
            const int two = out_channels - o > 16;
            const __mmask16 mask0 = (__mmask16)(out_channels - o >= 16 ? 0xFFFFu : (1u << (out_channels - o)) - 1u);
            __mmask16 mask1 = 0;
            if (out_channels - o >= 32) {
                mask1 = 0xFFFF;
            } else if (two) {
                mask1 = (__mmask16)((1u << (out_channels - o - 16)) - 1u);
            }
            const __m512 start0 = has_bias ? _mm512_maskz_loadu_ps(mask0, bias + o) : _mm512_setzero_ps();
            const __m512 start1 = has_bias && two ? _mm512_maskz_loadu_ps(mask1, bias + o + 16) : start0;
            __m512 acc0 = start0, acc1 = start0, acc2 = start0, acc3 = start0, acc4 = start0, acc5 = start0, acc6 = start0, acc7 = start0;
            __m512 acc8 = start1, acc9 = start1, acc10 = start1, acc11 = start1, acc12 = start1, acc13 = start1, acc14 = start1, acc15 = start1;
            for (int ky = ky0; ky < ky1; ++ky) {
                for (int kx = kx0; kx < kx1; ++kx) {
                    const float *xp = x + (x_offset + p0 * pixel_stride + ky * row_stride + kx * column_stride);
                    const float *wp = w + (ky * kernel_width + kx) * in_channels * out_channels + o;
                    for (int i = 0; i < in_channels; ++i) {
                        const __m512 wv0 = _mm512_maskz_loadu_ps(mask0, wp + i * out_channels);
                        const float *xi = xp + i * channel_stride;
                        if (two) {
                            const __m512 wv1 = _mm512_maskz_loadu_ps(mask1, wp + i * out_channels + 16);
                            {
                                const __m512 xr = _mm512_set1_ps(xi[0]);
                                acc0 = _mm512_fmadd_ps(xr, wv0, acc0);
                                acc8 = _mm512_fmadd_ps(xr, wv1, acc8);
                            }
                            if (count > 1) {
                                const __m512 xr = _mm512_set1_ps(xi[pixel_stride]);
                                acc1 = _mm512_fmadd_ps(xr, wv0, acc1);
                                acc9 = _mm512_fmadd_ps(xr, wv1, acc9);
                            }
                            if (count > 2) {
                                const __m512 xr = _mm512_set1_ps(xi[2 * pixel_stride]);
                                acc2 = _mm512_fmadd_ps(xr, wv0, acc2);
                                acc10 = _mm512_fmadd_ps(xr, wv1, acc10);
                            }
                            if (count > 3) {
                                const __m512 xr = _mm512_set1_ps(xi[3 * pixel_stride]);
                                acc3 = _mm512_fmadd_ps(xr, wv0, acc3);
                                acc11 = _mm512_fmadd_ps(xr, wv1, acc11);
                            }
                            if (count > 4) {
                                const __m512 xr = _mm512_set1_ps(xi[4 * pixel_stride]);
                                acc4 = _mm512_fmadd_ps(xr, wv0, acc4);
                                acc12 = _mm512_fmadd_ps(xr, wv1, acc12);
                            }
                            if (count > 5) {
                                const __m512 xr = _mm512_set1_ps(xi[5 * pixel_stride]);
                                acc5 = _mm512_fmadd_ps(xr, wv0, acc5);
                                acc13 = _mm512_fmadd_ps(xr, wv1, acc13);
                            }
                            if (count > 6) {
                                const __m512 xr = _mm512_set1_ps(xi[6 * pixel_stride]);
                                acc6 = _mm512_fmadd_ps(xr, wv0, acc6);
                                acc14 = _mm512_fmadd_ps(xr, wv1, acc14);
                            }
                            if (count > 7) {
                                const __m512 xr = _mm512_set1_ps(xi[7 * pixel_stride]);
                                acc7 = _mm512_fmadd_ps(xr, wv0, acc7);
                                acc15 = _mm512_fmadd_ps(xr, wv1, acc15);
                            }
                        } else {
                            acc0 = _mm512_fmadd_ps(_mm512_set1_ps(xi[0]), wv0, acc0);
                            if (count > 1) acc1 = _mm512_fmadd_ps(_mm512_set1_ps(xi[pixel_stride]), wv0, acc1);
                            if (count > 2) acc2 = _mm512_fmadd_ps(_mm512_set1_ps(xi[2 * pixel_stride]), wv0, acc2);
                            if (count > 3) acc3 = _mm512_fmadd_ps(_mm512_set1_ps(xi[3 * pixel_stride]), wv0, acc3);
                            if (count > 4) acc4 = _mm512_fmadd_ps(_mm512_set1_ps(xi[4 * pixel_stride]), wv0, acc4);
                            if (count > 5) acc5 = _mm512_fmadd_ps(_mm512_set1_ps(xi[5 * pixel_stride]), wv0, acc5);
                            if (count > 6) acc6 = _mm512_fmadd_ps(_mm512_set1_ps(xi[6 * pixel_stride]), wv0, acc6);
                            if (count > 7) acc7 = _mm512_fmadd_ps(_mm512_set1_ps(xi[7 * pixel_stride]), wv0, acc7);
                            if (count > 8) acc8 = _mm512_fmadd_ps(_mm512_set1_ps(xi[8 * pixel_stride]), wv0, acc8);
                            if (count > 9) acc9 = _mm512_fmadd_ps(_mm512_set1_ps(xi[9 * pixel_stride]), wv0, acc9);
                            if (count > 10) acc10 = _mm512_fmadd_ps(_mm512_set1_ps(xi[10 * pixel_stride]), wv0, acc10);
                            if (count > 11) acc11 = _mm512_fmadd_ps(_mm512_set1_ps(xi[11 * pixel_stride]), wv0, acc11);
                            if (count > 12) acc12 = _mm512_fmadd_ps(_mm512_set1_ps(xi[12 * pixel_stride]), wv0, acc12);
                            if (count > 13) acc13 = _mm512_fmadd_ps(_mm512_set1_ps(xi[13 * pixel_stride]), wv0, acc13);
                            if (count > 14) acc14 = _mm512_fmadd_ps(_mm512_set1_ps(xi[14 * pixel_stride]), wv0, acc14);
                            if (count > 15) acc15 = _mm512_fmadd_ps(_mm512_set1_ps(xi[15 * pixel_stride]), wv0, acc15);
                        }
                    }
                }
            }
            __m512 acc[16];
            acc[0] = acc0;
            acc[1] = acc1;
            acc[2] = acc2;
            acc[3] = acc3;
            acc[4] = acc4;
            acc[5] = acc5;
            acc[6] = acc6;
            acc[7] = acc7;
            acc[8] = acc8;
            acc[9] = acc9;
            acc[10] = acc10;
            acc[11] = acc11;
            acc[12] = acc12;
            acc[13] = acc13;
            acc[14] = acc14;
            acc[15] = acc15;
            for (int q = 0; q < count; ++q) {
                /* Pixel q's first vector is acc[q], and its second, when two, is acc[8 + q]. */
                const int p = p0 + q;
                __m512 v = activate_f32x16(acc[q], activation);
                if (has_residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask0, residual + p * out_channels + o));
                _mm512_mask_storeu_ps(y + p * out_channels + o, mask0, v);
                if (two) {
                    v = activate_f32x16(acc[8 + q], activation);
                    if (has_residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask1, residual + p * out_channels + o + 16));
                    _mm512_mask_storeu_ps(y + p * out_channels + o + 16, mask1, v);
                }
            }
        }
    }
}
#elif defined(KERNELS_AVX2)
KERNEL_INLINE void convolution_f32_pixels(const float *restrict x, const float *restrict w,
    const float *restrict bias, const float *restrict residual, float *restrict y,
    int pixels, int pixel_stride, int in_channels, int out_channels, int kernel_width,
    int row_stride, int column_stride, int channel_stride, int x_offset,
    int ky0, int ky1, int kx0, int kx1, int has_bias, int has_residual, int activation)
{
    /* Eight output channels at a time and one accumulator per pixel, so each weight vector feeds
       up to 8 independent FMA chains. Pixels go in groups of 8. */
    for (int p0 = 0; p0 < pixels; p0 += 8) {
        const int count = pixels - p0 < 8 ? pixels - p0 : 8;
        const float *restrict xg = x + p0 * pixel_stride;
        float *restrict yg = y + p0 * out_channels;
        const float *restrict rg = has_residual ? residual + p0 * out_channels : residual;
        for (int o = 0; o < out_channels; o += 8) {
            const __m256i mask = lane_mask_f32x8(out_channels - o);
            const __m256 start = has_bias ? _mm256_maskload_ps(bias + o, mask) : _mm256_setzero_ps();
            __m256 acc0 = start, acc1 = start, acc2 = start, acc3 = start, acc4 = start, acc5 = start, acc6 = start, acc7 = start;
            for (int ky = ky0; ky < ky1; ++ky) {
                for (int kx = kx0; kx < kx1; ++kx) {
                    const float *xp = xg + (x_offset + ky * row_stride + kx * column_stride);
                    const float *wp = w + (ky * kernel_width + kx) * in_channels * out_channels + o;
                    for (int i = 0; i < in_channels; ++i) {
                        const __m256 wv = _mm256_maskload_ps(wp + i * out_channels, mask);
                        const float *xi = xp + i * channel_stride;
                        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(xi[0]), wv, acc0);
                        if (count > 1) acc1 = _mm256_fmadd_ps(_mm256_set1_ps(xi[pixel_stride]), wv, acc1);
                        if (count > 2) acc2 = _mm256_fmadd_ps(_mm256_set1_ps(xi[2 * pixel_stride]), wv, acc2);
                        if (count > 3) acc3 = _mm256_fmadd_ps(_mm256_set1_ps(xi[3 * pixel_stride]), wv, acc3);
                        if (count > 4) acc4 = _mm256_fmadd_ps(_mm256_set1_ps(xi[4 * pixel_stride]), wv, acc4);
                        if (count > 5) acc5 = _mm256_fmadd_ps(_mm256_set1_ps(xi[5 * pixel_stride]), wv, acc5);
                        if (count > 6) acc6 = _mm256_fmadd_ps(_mm256_set1_ps(xi[6 * pixel_stride]), wv, acc6);
                        if (count > 7) acc7 = _mm256_fmadd_ps(_mm256_set1_ps(xi[7 * pixel_stride]), wv, acc7);
                    }
                }
            }
            __m256 acc[8];
            acc[0] = acc0;
            acc[1] = acc1;
            acc[2] = acc2;
            acc[3] = acc3;
            acc[4] = acc4;
            acc[5] = acc5;
            acc[6] = acc6;
            acc[7] = acc7;
            for (int p = 0; p < count; ++p) {
                __m256 v = activate_f32x8(acc[p], activation);
                if (has_residual) v = _mm256_add_ps(v, _mm256_maskload_ps(rg + p * out_channels + o, mask));
                _mm256_maskstore_ps(yg + p * out_channels + o, mask, v);
            }
        }
    }
}
#else
/* Portable: y is the accumulator, and the output-channel loops are contiguous and vectorizable. */
KERNEL_INLINE void convolution_f32_pixels(const float *restrict x, const float *restrict w,
    const float *restrict bias, const float *restrict residual, float *restrict y,
    int pixels, int pixel_stride, int in_channels, int out_channels, int kernel_width,
    int row_stride, int column_stride, int channel_stride, int x_offset,
    int ky0, int ky1, int kx0, int kx1, int has_bias, int has_residual, int activation)
{
    for (int p = 0; p < pixels; ++p) {
        float *restrict yp = y + p * out_channels;
        for (int o = 0; o < out_channels; ++o) {
            yp[o] = has_bias ? bias[o] : 0.0f;
        }
        for (int ky = ky0; ky < ky1; ++ky) {
            for (int kx = kx0; kx < kx1; ++kx) {
                const int tap = x_offset + p * pixel_stride + ky * row_stride + kx * column_stride;
                const float *restrict wp = w + (ky * kernel_width + kx) * in_channels * out_channels;
                for (int i = 0; i < in_channels; ++i) {
                    const float xv = x[tap + i * channel_stride];
                    for (int o = 0; o < out_channels; ++o) {
                        yp[o] += xv * wp[i * out_channels + o];
                    }
                }
            }
        }
        for (int o = 0; o < out_channels; ++o) {
            float v = activate_f32(yp[o], activation);
            if (has_residual) v += residual[p * out_channels + o];
            yp[o] = v;
        }
    }
}
#endif
"""#

private let matrixVectorSource = #"""
/*
 * A fully connected layer on a vector:
 *   y[o] = activation(bias[o] + sum over i of w[o][i] * x[i]) for o < outputs,
 * with w in PyTorch's [outputs][inputs] order. Input block b (16 floats) accumulates in chain
 * b % 4 of four, so four independent FMA chains hide the FMA latency. The sum is
 * (chain 0 + chain 1) + (chain 2 + chain 3), then its 16 lanes as a tree, then the bias, then
 * the inputs past the last full block. Every instruction set adds in this order, and only
 * blocked_dot_f32 (the dot product of the first `blocked` inputs) differs between them.
 */
#if defined(KERNELS_AVX512)
KERNEL_INLINE float blocked_dot_f32(const float *restrict row, const float *restrict x, int blocked)
{
    __m512 chain0 = _mm512_setzero_ps(), chain1 = chain0, chain2 = chain0, chain3 = chain0;
    int i = 0;
    for (; i + 64 <= blocked; i += 64) {
        chain0 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(x + i), chain0);
        chain1 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i + 16), _mm512_loadu_ps(x + i + 16), chain1);
        chain2 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i + 32), _mm512_loadu_ps(x + i + 32), chain2);
        chain3 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i + 48), _mm512_loadu_ps(x + i + 48), chain3);
    }
    if (i < blocked) {
        chain0 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(x + i), chain0);
        i += 16;
    }
    if (i < blocked) {
        chain1 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(x + i), chain1);
        i += 16;
    }
    if (i < blocked) {
        chain2 = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(x + i), chain2);
    }
    const __m512 lanes16 = _mm512_add_ps(_mm512_add_ps(chain0, chain1), _mm512_add_ps(chain2, chain3));
    const __m256 lanes8 = _mm256_add_ps(_mm512_castps512_ps256(lanes16),
                                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes16), 1)));
    const __m128 lanes4 = _mm_add_ps(_mm256_castps256_ps128(lanes8), _mm256_extractf128_ps(lanes8, 1));
    const __m128 lanes2 = _mm_add_ps(lanes4, _mm_movehl_ps(lanes4, lanes4));
    return _mm_cvtss_f32(_mm_add_ss(lanes2, _mm_shuffle_ps(lanes2, lanes2, 1)));
}
#elif defined(KERNELS_AVX2)
KERNEL_INLINE float blocked_dot_f32(const float *restrict row, const float *restrict x, int blocked)
{
    /* Lanes 0-7 of chain c are in lowc, lanes 8-15 in highc. */
    __m256 low0 = _mm256_setzero_ps(), low1 = low0, low2 = low0, low3 = low0;
    __m256 high0 = low0, high1 = low0, high2 = low0, high3 = low0;
    int i = 0;
    for (; i + 64 <= blocked; i += 64) {
        low0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), low0);
        high0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8), _mm256_loadu_ps(x + i + 8), high0);
        low1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 16), _mm256_loadu_ps(x + i + 16), low1);
        high1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 24), _mm256_loadu_ps(x + i + 24), high1);
        low2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 32), _mm256_loadu_ps(x + i + 32), low2);
        high2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 40), _mm256_loadu_ps(x + i + 40), high2);
        low3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 48), _mm256_loadu_ps(x + i + 48), low3);
        high3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 56), _mm256_loadu_ps(x + i + 56), high3);
    }
    if (i < blocked) {
        low0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), low0);
        high0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8), _mm256_loadu_ps(x + i + 8), high0);
        i += 16;
    }
    if (i < blocked) {
        low1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), low1);
        high1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8), _mm256_loadu_ps(x + i + 8), high1);
        i += 16;
    }
    if (i < blocked) {
        low2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(x + i), low2);
        high2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8), _mm256_loadu_ps(x + i + 8), high2);
    }
    const __m256 lanes_low = _mm256_add_ps(_mm256_add_ps(low0, low1), _mm256_add_ps(low2, low3));
    const __m256 lanes_high = _mm256_add_ps(_mm256_add_ps(high0, high1), _mm256_add_ps(high2, high3));
    const __m256 lanes8 = _mm256_add_ps(lanes_low, lanes_high);
    const __m128 lanes4 = _mm_add_ps(_mm256_castps256_ps128(lanes8), _mm256_extractf128_ps(lanes8, 1));
    const __m128 lanes2 = _mm_add_ps(lanes4, _mm_movehl_ps(lanes4, lanes4));
    return _mm_cvtss_f32(_mm_add_ss(lanes2, _mm_shuffle_ps(lanes2, lanes2, 1)));
}
#else
KERNEL_INLINE float blocked_dot_f32(const float *restrict row, const float *restrict x, int blocked)
{
    float chains[4][16] = {{0.0f}};
    for (int i = 0; i < blocked; i += 16) {
        float *restrict chain = chains[i / 16 % 4];
        for (int j = 0; j < 16; ++j) {
            chain[j] += row[i + j] * x[i + j];
        }
    }
    float lanes[16];
    for (int j = 0; j < 16; ++j) {
        lanes[j] = (chains[0][j] + chains[1][j]) + (chains[2][j] + chains[3][j]);
    }
    for (int width = 8; width >= 1; width /= 2) {
        for (int j = 0; j < width; ++j) {
            lanes[j] += lanes[j + width];
        }
    }
    return lanes[0];
}
#endif

KERNEL_INLINE void matrix_vector_f32(const float *restrict x, const float *restrict w,
    const float *restrict bias, float *restrict y, int outputs, int inputs, int has_bias, int activation)
{
    const int blocked = inputs - inputs % 16;
    for (int o = 0; o < outputs; ++o) {
        const float *restrict row = w + o * inputs;
        float sum = (has_bias ? bias[o] : 0.0f) + blocked_dot_f32(row, x, blocked);
        for (int i = blocked; i < inputs; ++i) {
            sum += row[i] * x[i];
        }
        y[o] = activate_f32(sum, activation);
    }
}
"""#

/// The input channels of a GEMM that are not all zero over its rows. The tile kernels skip the
/// others, whose terms `±0 * w` leave every sum as it was. Only a sum of zeros may come out as
/// +0.0f instead of -0.0f. After a ReLU, a large share of the channels are often zero. A channel
/// with a NaN in some row stays in the list, so a NaN still reaches the output.
private let nonzeroChannelsSource = #"""
/*
 * Writes the channels c of x ([pixels][channels], NHWC) that hold a value other than +0.0f and
 * -0.0f in some pixel to list, in increasing order, and returns how many there are (at most
 * channels). Defining KERNELS_ALL_CHANNELS lists every channel, so the GEMMs skip none (to
 * time the code without the skipping).
 */
#if defined(KERNELS_ALL_CHANNELS)
KERNEL_INLINE int nonzero_channels_f32(const float *restrict x, int pixels, int channels, int *restrict list)
{
    (void)x;
    (void)pixels;
    for (int c = 0; c < channels; ++c) list[c] = c;
    return channels;
}
#elif defined(KERNELS_AVX512)
KERNEL_INLINE int nonzero_channels_f32(const float *restrict x, int pixels, int channels, int *restrict list)
{
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int count = 0;
    for (int c = 0; c < channels; c += 16) {
        const __mmask16 mask = (__mmask16)(channels - c >= 16 ? 0xFFFFu : (1u << (channels - c)) - 1u);
        __m512i bits = _mm512_setzero_si512();
        for (int p = 0; p < pixels; ++p) {
            bits = _mm512_or_si512(bits, _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, x + p * channels + c)));
        }
        const __mmask16 used = _mm512_test_epi32_mask(bits, _mm512_set1_epi32(0x7FFFFFFF));
        _mm512_mask_compressstoreu_epi32(list + count, used, _mm512_add_epi32(_mm512_set1_epi32(c), lanes));
        for (unsigned rest = used; rest != 0; rest &= rest - 1) ++count;
    }
    return count;
}
#elif defined(KERNELS_AVX2)
KERNEL_INLINE int nonzero_channels_f32(const float *restrict x, int pixels, int channels, int *restrict list)
{
    int count = 0;
    for (int c = 0; c < channels; c += 8) {
        const __m256i mask = lane_mask_f32x8(channels - c);
        __m256 bits = _mm256_setzero_ps();
        for (int p = 0; p < pixels; ++p) {
            bits = _mm256_or_ps(bits, _mm256_maskload_ps(x + p * channels + c, mask));
        }
        const __m256i magnitude = _mm256_and_si256(_mm256_castps_si256(bits), _mm256_set1_epi32(0x7FFFFFFF));
        const __m256i zero = _mm256_cmpeq_epi32(magnitude, _mm256_setzero_si256());
        const unsigned used = ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(zero)) & 0xFFu;
        for (int lane = 0; lane < 8; ++lane) {
            if (used >> lane & 1u) list[count++] = c + lane;
        }
    }
    return count;
}
#else
KERNEL_INLINE int nonzero_channels_f32(const float *restrict x, int pixels, int channels, int *restrict list)
{
    int count = 0;
    for (int c = 0; c < channels; ++c) {
        uint32_t bits = 0;
        for (int p = 0; p < pixels; ++p) {
            union { float f; uint32_t u; } value;
            value.f = x[p * channels + c];
            bits |= value.u;
        }
        list[count] = c;
        count += (bits & 0x7FFFFFFFu) != 0;
    }
    return count;
}
#endif
"""#
