/* The kernels for one vector width: included by conv_rows.c once per LANES (8 and 32 members). */
#define VECS (LANES / 8)
#define CAT(a, b) a##b
#define NAME(a, b) CAT(a, b)

/* acc = g(c, Y, X) of one row for the LANES members from p0. */
static inline void NAME(pixel, LANES)(const float *a, const float *wt, const plan *pl, int64_t p0, int64_t c, int64_t Y,
                         int64_t X, vec acc[VECS]) {
    const int64_t P = pl->P, h = pl->h, w = pl->w, C = pl->C, k = pl->k;
    for (int v = 0; v < VECS; ++v) acc[v] = (vec){0};
    const int ny = pl->ny[Y], nx = pl->nx[X];
    for (int64_t o = 0; o < pl->O; ++o) {
        for (int ty = 0; ty < ny; ++ty) {
            const float *arow = a + ((o * h + pl->iy[Y][ty]) * w) * P + p0;
            const float *wrow = wt + (((o * C + c) * k + pl->ky[Y][ty]) * k) * P + p0;
            for (int tx = 0; tx < nx; ++tx) {
                const vec *av = (const vec *)(arow + pl->jx[X][tx] * P);
                const vec *wv = (const vec *)(wrow + pl->kx[X][tx] * P);
                for (int v = 0; v < VECS; ++v) acc[v] += av[v] * wv[v];
            }
        }
    }
}

void NAME(gls_conv_rows_transpose, LANES)(const float *A, const float *Wt, float *out, int64_t P, int64_t N,
                             int64_t O, int64_t h, int64_t w, int64_t C, int64_t k, int64_t s,
                             int64_t y0, int64_t x0, int64_t H, int64_t W, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, out_size = C * H * W * P;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t p0 = b * LANES;
            const float *a = A + n * in_size;
            float *o = out + n * out_size;
            vec acc[VECS];
            for (int64_t c = 0; c < C; ++c) {
                for (int64_t y = 0; y < H; ++y) {
                    for (int64_t x = 0; x < W; ++x) {
                        const int64_t Y = y + y0, X = x + x0;
                        vec *dst = (vec *)(o + ((c * H + y) * W + x) * P + p0);
                        if (Y < 0 || Y >= Hf || X < 0 || X >= Wf) {
                            for (int v = 0; v < VECS; ++v) dst[v] = (vec){0};
                            continue;
                        }
                        NAME(pixel, LANES)(a, Wt, &pl, p0, c, Y, X, acc);
                        for (int v = 0; v < VECS; ++v) dst[v] = acc[v];
                    }
                }
            }
        }
    }
}

void NAME(gls_conv_rows_concretize, LANES)(const float *A, const float *Wt, const float *centre, const float *radius,
                              const int64_t *sample, const int64_t *origin_y, const int64_t *origin_x,
                              float *out, int64_t P, int64_t N, int64_t O, int64_t h, int64_t w,
                              int64_t C, int64_t k, int64_t s, int64_t Hin, int64_t Win, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, map_size = C * Hin * Win;
    typedef int ivec __attribute__((vector_size(32)));
    const ivec mask = (ivec){0} + 0x7fffffff;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t p0 = b * LANES;
            const float *a = A + n * in_size;
            const float *cen = centre + sample[n] * map_size, *rad = radius + sample[n] * map_size;
            vec acc[VECS], total[VECS];
            for (int v = 0; v < VECS; ++v) total[v] = (vec){0};
            for (int64_t c = 0; c < C; ++c) {
                for (int64_t Y = 0; Y < Hf; ++Y) {
                    const int64_t row = origin_y[n] + Y;
                    if (row < 0 || row >= Hin) continue;
                    for (int64_t X = 0; X < Wf; ++X) {
                        const int64_t col = origin_x[n] + X;
                        if (col < 0 || col >= Win) continue;
                        const float cv = cen[(c * Hin + row) * Win + col], rv = rad[(c * Hin + row) * Win + col];
                        NAME(pixel, LANES)(a, Wt, &pl, p0, c, Y, X, acc);
                        for (int v = 0; v < VECS; ++v) {
                            const vec magnitude = (vec)((ivec)acc[v] & mask);

                            total[v] += acc[v] * cv - magnitude * rv;
                        }
                    }
                }
            }
            float *dst = out + n * P + p0;
            memcpy(dst, total, sizeof(float) * LANES);
        }
    }
}

#undef VECS
#undef NAME
#undef CAT
