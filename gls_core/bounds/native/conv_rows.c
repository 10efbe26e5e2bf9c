/* Transposed convolutions of coefficient rows with a weight set per population member.
 *
 * Layout: members are the innermost axis of every array, padded to a multiple of LANES (8 or 32), so each
 * multiply-add runs over a block of members at once and vectorises whatever the layer's channel
 * count; a row's geometry is shared by all members, its coefficients are not.
 *   A[N][O][h][w][P]   coefficients of N rows on a convolution's output (O channels, h x w)
 *   Wt[O][C][k][k][P]  the convolution's weights, stride s
 * A row's image through the layer is the full transposed convolution g[C][Hf][Wf],
 * Hf = (h-1)*s + k, g(Y, X) = sum over o, ky, kx with Y = i*s + ky, X = j*s + kx of a(o, i, j) w(o, ky, kx).
 *
 * gls_conv_rows_transpose stores g cropped to [y0, y0 + H) x [x0, x0 + W) (zero beyond Hf, Wf).
 * gls_relax_concretize does the same for rows one ReLU higher, relaxing them on the fly.
 * gls_conv_rows_dual is the gradient of gls_conv_rows_concretize with respect to the rows.
 * gls_conv_rows_concretize never stores g: per row and member it returns the minimum over the input
 * box of sum g * x = sum g * centre - |g| * radius, pixel (Y, X) sitting at input position
 * (oy + Y, ox + X) of the row's sample; pixels outside the input map (zero padding) contribute 0.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TAPS 16

typedef float vec __attribute__((vector_size(32), aligned(4)));  /* 8 floats, unaligned loads */
typedef int ivec_t __attribute__((vector_size(32)));

typedef struct {
    int64_t P, O, h, w, C, k;
    const int *ny, *nx;
    const int64_t (*iy)[MAX_TAPS], (*ky)[MAX_TAPS], (*jx)[MAX_TAPS], (*kx)[MAX_TAPS];
} plan;

/* A per-thread buffer of ``floats`` floats, 64-byte aligned (freed by the caller). */
static float *scratch(int64_t floats) {
    return (float *)aligned_alloc(64, sizeof(float) * (size_t)((floats + 15) / 16 * 16));
}

/* The (input index, kernel index) pairs that reach full-output coordinate Y = i*s + ky. */
static int taps_of(int64_t Y, int64_t s, int64_t k, int64_t h, int64_t *index, int64_t *kernel) {
    int count = 0;
    for (int64_t ky = Y % s; ky < k && count < MAX_TAPS; ky += s) {
        const int64_t i = (Y - ky) / s;
        if (i >= 0 && i < h) {
            index[count] = i;
            kernel[count] = ky;
            ++count;
        }
    }
    return count;
}

#define PLAN(name)                                                                          \
    const int64_t Hf = (h - 1) * s + k, Wf = (w - 1) * s + k;                               \
    int ny_[Hf], nx_[Wf];                                                                   \
    int64_t iy_[Hf][MAX_TAPS], ky_[Hf][MAX_TAPS], jx_[Wf][MAX_TAPS], kx_[Wf][MAX_TAPS];     \
    for (int64_t Y = 0; Y < Hf; ++Y) ny_[Y] = taps_of(Y, s, k, h, iy_[Y], ky_[Y]);          \
    for (int64_t X = 0; X < Wf; ++X) nx_[X] = taps_of(X, s, k, w, jx_[X], kx_[X]);          \
    const plan name = {P, O, h, w, C, k, ny_, nx_, iy_, ky_, jx_, kx_}

#define LANES 8
#include "conv_rows_lanes.h"
#undef LANES
#define LANES 32
#include "conv_rows_lanes.h"
#undef LANES

/* A population's tensor moved to members-last: src holds element (p, b, q) at p*sP + b*sB + q (q < Q contiguous:
 * members-first tensors and views whose batch axis is outermost), dst[(b*Q + q)*Pp + p], zero for P <= p < Pp.
 * Blocks of 16 q per member keep the writes of a block within a few cache lines. */
void gls_members_last(const float *src, float *dst, int64_t P, int64_t B, int64_t Q, int64_t sP, int64_t sB,
                      int64_t Pp, int threads) {
    const int64_t blocks = (Q + 15) / 16;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t block = 0; block < blocks; ++block) {
            const int64_t q0 = block * 16, count = Q - q0 < 16 ? Q - q0 : 16;
            float *d = dst + (b * Q + q0) * Pp;
            for (int64_t p = 0; p < P; ++p) {
                const float *from = src + p * sP + b * sB + q0;
                for (int64_t m = 0; m < count; ++m) d[m * Pp + p] = from[m];
            }
            for (int64_t m = 0; m < count; ++m)
                for (int64_t p = P; p < Pp; ++p) d[m * Pp + p] = 0.0f;
        }
    }
}
