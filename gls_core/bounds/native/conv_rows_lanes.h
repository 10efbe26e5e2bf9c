/* The kernels for one vector width: included by conv_rows.c once per LANES (8 and 32 members). */
#define VECS (LANES / 8)
#define CAT(a, b) a##b
#define NAME(a, b) CAT(a, b)

/* row[X] = g(c, Y, X) for the whole output row Y (X < Wf) of one row of coefficients ``a`` (starting at member
 * p0, ``stride`` floats from one coefficient to the next: P, or LANES in a row buffer), for the LANES members
 * from p0. The taps that reach row Y are scattered along it with each weight held in registers: a strided
 * multiply-add over the row per weight instead of a table walk per pixel. Every pixel sums its terms in a fixed
 * order (channel, vertical tap, kx ascending), the order of the earlier per-pixel gather, whose bits it keeps. */
static inline void NAME(image_row, LANES)(const float *a, int64_t stride, const float *wt, const plan *pl, int64_t p0,
                                          int64_t s, int64_t c, int64_t Y, float *row) {
    const int64_t P = pl->P, h = pl->h, w = pl->w, C = pl->C, k = pl->k;
    memset(row, 0, sizeof(float) * (size_t)(((w - 1) * s + k) * LANES));
    const int ny = pl->ny[Y];
    for (int64_t o = 0; o < pl->O; ++o) {
        for (int ty = 0; ty < ny; ++ty) {
            const float *arow = a + ((o * h + pl->iy[Y][ty]) * w) * stride;
            const float *wrow = wt + (((o * C + c) * k + pl->ky[Y][ty]) * k) * P + p0;
            for (int64_t kx = 0; kx < k; ++kx) {
                vec wv[VECS];
                for (int v = 0; v < VECS; ++v) wv[v] = ((const vec *)(wrow + kx * P))[v];
                float *dst = row + kx * LANES;
                for (int64_t j = 0; j < w; ++j) {
                    const vec *av = (const vec *)(arow + j * stride);
                    vec *d = (vec *)(dst + j * s * LANES);
                    for (int v = 0; v < VECS; ++v) d[v] += av[v] * wv[v];
                }
            }
        }
    }
}

/* total += min over the input box of sum g * x for one row's image g (``a`` and ``stride`` as in image_row): per output
 * row of the image inside the input map, sum g * centre - |g| * radius; (origin_y, origin_x) is the input
 * position of the image's top-left pixel and ``image`` a buffer of Wf x LANES floats. */
static inline void NAME(concretize_rows, LANES)(const float *a, int64_t stride, const float *wt, const plan *pl,
                                                int64_t p0, int64_t s, const float *cen, const float *rad,
                                                int64_t origin_y, int64_t origin_x, int64_t Hin, int64_t Win,
                                                float *image, vec total[VECS]) {
    const int64_t Hf = (pl->h - 1) * s + pl->k, Wf = (pl->w - 1) * s + pl->k;
    const int64_t x_lo = origin_x < 0 ? -origin_x : 0, x_hi = Win - origin_x < Wf ? Win - origin_x : Wf;
    const ivec_t mask = (ivec_t){0} + 0x7fffffff;
    for (int64_t c = 0; c < pl->C; ++c) {
        for (int64_t Y = 0; Y < Hf; ++Y) {
            const int64_t row = origin_y + Y;
            if (row < 0 || row >= Hin) continue;
            NAME(image_row, LANES)(a, stride, wt, pl, p0, s, c, Y, image);
            const float *cline = cen + (c * Hin + row) * Win + origin_x, *rline = rad + (c * Hin + row) * Win + origin_x;
            for (int64_t X = x_lo; X < x_hi; ++X) {
                const float cv = cline[X], rv = rline[X];
                const vec *g = (const vec *)(image + X * LANES);
                for (int v = 0; v < VECS; ++v) {
                    const vec magnitude = (vec)((ivec_t)g[v] & mask);
                    total[v] += g[v] * cv - magnitude * rv;
                }
            }
        }
    }
}

/* Row n relaxed through the ReLU into ``relaxed`` ([O][h][w][LANES]); ``offset`` gets
 * sum a' b1 + sum min(a, 0) uo. Pointers start at member p0 of row n's coefficients and maps. */
static inline void NAME(relax_row, LANES)(const float *a, const float *lmaps, const float *umaps, const float *omaps,
                                          const float *bias, int64_t P, int64_t O, int64_t h, int64_t w, int64_t H1,
                                          int64_t W1, int64_t oy, int64_t ox, float *relaxed, vec offset[VECS]) {
    for (int v = 0; v < VECS; ++v) offset[v] = (vec){0};
    for (int64_t o = 0; o < O; ++o) {
        const vec *bv = (const vec *)(bias + o * P);
        for (int64_t i = 0; i < h; ++i) {
            const int64_t y = oy + i;
            for (int64_t j = 0; j < w; ++j) {
                const int64_t x = ox + j, q = (o * h + i) * w + j;
                vec *dst = (vec *)(relaxed + q * LANES);
                if (y < 0 || y >= H1 || x < 0 || x >= W1) {
                    for (int v = 0; v < VECS; ++v) dst[v] = (vec){0};
                    continue;
                }
                const int64_t at = ((o * H1 + y) * W1 + x) * P;
                const vec *av = (const vec *)(a + q * P);
                const vec *lv = (const vec *)(lmaps + at), *uv = (const vec *)(umaps + at);
                for (int v = 0; v < VECS; ++v) {
                    const vec zero = (vec){0};
                    const vec positive = (vec)((ivec_t)av[v] & (av[v] > zero));
                    const vec negative = av[v] - positive;
                    dst[v] = positive * lv[v] + negative * uv[v];
                    offset[v] += dst[v] * bv[v];
                    if (omaps) offset[v] += negative * ((const vec *)(omaps + at))[v];
                }
            }
        }
    }
}

/* d(concretised value)/d(relaxed row) for rows relaxed in ``relaxed`` ([O][h][w][LANES]): the
 * convolution bias plus centre - sign(g) radius correlated with the weights, into dual (row stride P). */
static inline void NAME(row_dual, LANES)(const float *relaxed, const float *Wt, const float *bias, const plan *pl,
                                         int64_t p0, int64_t s, const float *cen, const float *rad, int64_t origin_y,
                                         int64_t origin_x, int64_t Hin, int64_t Win, float *m, float *dual) {
    const int64_t P = pl->P, O = pl->O, h = pl->h, w = pl->w, C = pl->C, k = pl->k;
    const int64_t Hf = (h - 1) * s + k, Wf = (w - 1) * s + k;
    for (int64_t c = 0; c < C; ++c) {
        for (int64_t Y = 0; Y < Hf; ++Y) {
            const int64_t row = origin_y + Y;
            float *line = m + (c * Hf + Y) * Wf * LANES;
            if (row < 0 || row >= Hin) {
                memset(line, 0, sizeof(float) * (size_t)(Wf * LANES));
                continue;
            }
            NAME(image_row, LANES)(relaxed, LANES, Wt, pl, p0, s, c, Y, line);  /* g, then m in place */
            for (int64_t X = 0; X < Wf; ++X) {
                const int64_t col = origin_x + X;
                vec *dst = (vec *)(line + X * LANES);
                if (col < 0 || col >= Win) {
                    for (int v = 0; v < VECS; ++v) dst[v] = (vec){0};
                    continue;
                }
                const float cv = cen[(c * Hin + row) * Win + col], rv = rad[(c * Hin + row) * Win + col];
                for (int v = 0; v < VECS; ++v) {
                    const vec zero = (vec){0}, r = (vec){0} + rv, g = dst[v];
                    const vec up = (vec)((ivec_t)r & (g > zero)), down = (vec)((ivec_t)r & (g < zero));
                    dst[v] = cv - up + down;
                }
            }
        }
    }
    for (int64_t o = 0; o < O; ++o) {
        for (int64_t i = 0; i < h; ++i) {
            for (int64_t j = 0; j < w; ++j) {
                vec total[VECS];
                for (int v = 0; v < VECS; ++v) total[v] = bias ? ((const vec *)(bias + o * P + p0))[v] : (vec){0};
                for (int64_t c = 0; c < C; ++c) {
                    for (int64_t ky = 0; ky < k; ++ky) {
                        const float *mrow = m + ((c * Hf + i * s + ky) * Wf + j * s) * LANES;
                        const float *wrow = Wt + (((o * C + c) * k + ky) * k) * P + p0;
                        for (int64_t kx = 0; kx < k; ++kx) {
                            const vec *mv = (const vec *)(mrow + kx * LANES);
                            const vec *wv = (const vec *)(wrow + kx * P);
                            for (int v = 0; v < VECS; ++v) total[v] += mv[v] * wv[v];
                        }
                    }
                }
                memcpy(dual + ((o * h + i) * w + j) * P + p0, total, sizeof(float) * LANES);
            }
        }
    }
}

void NAME(gls_conv_rows_transpose, LANES)(const float *A, const float *Wt, float *out, int64_t P, int64_t N,
                             int64_t O, int64_t h, int64_t w, int64_t C, int64_t k, int64_t s,
                             int64_t y0, int64_t x0, int64_t H, int64_t W, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, out_size = C * H * W * P;
#pragma omp parallel num_threads(threads)
    {
        float *image = scratch(Wf * LANES);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t p0 = b * LANES;
                const float *a = A + n * in_size;
                float *o = out + n * out_size;
                for (int64_t c = 0; c < C; ++c) {
                    for (int64_t y = 0; y < H; ++y) {
                        const int64_t Y = y + y0;
                        const int inside = Y >= 0 && Y < Hf;
                        if (inside) NAME(image_row, LANES)(a + p0, P, Wt, &pl, p0, s, c, Y, image);
                        for (int64_t x = 0; x < W; ++x) {
                            const int64_t X = x + x0;
                            float *dst = o + ((c * H + y) * W + x) * P + p0;
                            if (inside && X >= 0 && X < Wf)
                                memcpy(dst, image + X * LANES, sizeof(float) * LANES);
                            else
                                memset(dst, 0, sizeof(float) * LANES);
                        }
                    }
                }
            }
        }
        free(image);
    }
}

void NAME(gls_conv_rows_concretize, LANES)(const float *A, const float *Wt, const float *centre, const float *radius,
                              const int64_t *sample, const int64_t *origin_y, const int64_t *origin_x,
                              float *out, int64_t P, int64_t N, int64_t O, int64_t h, int64_t w,
                              int64_t C, int64_t k, int64_t s, int64_t Hin, int64_t Win, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, map_size = C * Hin * Win;
#pragma omp parallel num_threads(threads)
    {
        float *image = scratch(Wf * LANES);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t p0 = b * LANES;
                vec total[VECS];
                for (int v = 0; v < VECS; ++v) total[v] = (vec){0};
                NAME(concretize_rows, LANES)(A + n * in_size + p0, P, Wt, &pl, p0, s, centre + sample[n] * map_size,
                                             radius + sample[n] * map_size, origin_y[n], origin_x[n], Hin, Win, image,
                                             total);
                memcpy(out + n * P + p0, total, sizeof(float) * LANES);
            }
        }
        free(image);
    }
}

/* Row n's coefficients relaxed into ``relaxed`` for the members from p0 (both relax kernels). */
#define RELAX_ROW(n, p0, relaxed, offset)                                                                  \
    NAME(relax_row, LANES)(A + arow[n] * in_size + (p0), ls + lmap[n] * map_size + (p0),                 \
                           us + umap[n] * map_size + (p0), uo ? uo + umap[n] * map_size + (p0) : 0,      \
                           bias + (p0), P, O, h, w, H1, W1, oy[n], ox[n], relaxed, offset)

/* Rows on the output of a ReLU over the first convolution's output, through the ReLU's relaxation and
 * the convolution, concretised over the input box: per row and member,
 *   sum_q a'_q (b1_q + [conv1 . x]_q) + sum_q min(a_q, 0) uo_q,  a' = max(a, 0) ls + min(a, 0) us,
 * minimised over the box. Row n reads coefficients A[arow[n]] ([O][h][w][P], shared by rows that
 * share weights), lower slopes from map lmap[n] and upper slope / offset from map umap[n] of the
 * relaxation ([*][O][H1][W1][P], zero outside the map), its window starting at (oy[n], ox[n]) of
 * that map; the input box is the sample's. The relaxed row lives only in a per-thread buffer. */
void NAME(gls_relax_concretize, LANES)(const float *A, const int64_t *arow, const float *ls, const int64_t *lmap,
                                       const float *us, const float *uo, const int64_t *umap, const int64_t *oy,
                                       const int64_t *ox, const float *Wt, const float *bias, const float *centre,
                                       const float *radius, const int64_t *sample, float *out, int64_t P, int64_t N,
                                       int64_t O, int64_t h, int64_t w, int64_t C, int64_t k, int64_t s,
                                       int64_t pad, int64_t H1, int64_t W1, int64_t Hin, int64_t Win, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, map_size = O * H1 * W1 * P;
    const int64_t box_size = C * Hin * Win, row_floats = O * h * w * LANES;
#pragma omp parallel num_threads(threads)
    {
        float *relaxed = scratch(row_floats), *image = scratch(Wf * LANES);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t p0 = b * LANES;
                vec total[VECS];
                RELAX_ROW(n, p0, relaxed, total);
                NAME(concretize_rows, LANES)(relaxed, LANES, Wt, &pl, p0, s, centre + sample[n] * box_size,
                                             radius + sample[n] * box_size, oy[n] * s - pad, ox[n] * s - pad,
                                             Hin, Win, image, total);
                memcpy(out + n * P + p0, total, sizeof(float) * LANES);
            }
        }
        free(relaxed);
        free(image);
    }
}

/* The gradient of gls_conv_rows_concretize with respect to the rows: per row and member,
 * dual[o][i][j] = sum over c, ky, kx of m(c, i*s + ky, j*s + kx) w(o, c, ky, kx), m = centre - sign(g) radius
 * on the pixels inside the input map (0 elsewhere; sign(0) = 0). */
void NAME(gls_conv_rows_dual, LANES)(const float *A, const float *Wt, const float *centre, const float *radius,
                                     const int64_t *sample, const int64_t *origin_y, const int64_t *origin_x,
                                     float *dual, int64_t P, int64_t N, int64_t O, int64_t h, int64_t w, int64_t C,
                                     int64_t k, int64_t s, int64_t Hin, int64_t Win, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, box_size = C * Hin * Win;
    const int64_t map_floats = C * Hf * Wf * LANES, row_floats = O * h * w * LANES;
#pragma omp parallel num_threads(threads)
    {
        float *m = scratch(map_floats);
        float *row = scratch(row_floats);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t p0 = b * LANES;
                for (int64_t q = 0; q < O * h * w; ++q)
                    memcpy(row + q * LANES, A + n * in_size + q * P + p0, sizeof(float) * LANES);
                NAME(row_dual, LANES)(row, Wt, 0, &pl, p0, s, centre + sample[n] * box_size,
                                      radius + sample[n] * box_size, origin_y[n], origin_x[n], Hin, Win, m,
                                      dual + n * in_size);
            }
        }
        free(m);
        free(row);
    }
}

/* The gradient of gls_relax_concretize with respect to the relaxed rows a' (bias included): dual
 * [N][O][h][w][P]; the chain through the relaxation is left to the caller. */
void NAME(gls_relax_dual, LANES)(const float *A, const int64_t *arow, const float *ls, const int64_t *lmap,
                                 const float *us, const float *uo, const int64_t *umap, const int64_t *oy,
                                 const int64_t *ox, const float *Wt, const float *bias, const float *centre,
                                 const float *radius, const int64_t *sample, float *dual, int64_t P, int64_t N,
                                 int64_t O, int64_t h, int64_t w, int64_t C, int64_t k, int64_t s, int64_t pad,
                                 int64_t H1, int64_t W1, int64_t Hin, int64_t Win, int threads) {
    PLAN(pl);
    const int64_t blocks = P / LANES, in_size = O * h * w * P, map_size = O * H1 * W1 * P;
    const int64_t box_size = C * Hin * Win, row_floats = O * h * w * LANES, map_floats = C * Hf * Wf * LANES;
#pragma omp parallel num_threads(threads)
    {
        float *relaxed = scratch(row_floats);
        float *m = scratch(map_floats);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t p0 = b * LANES;
                vec offset[VECS];
                RELAX_ROW(n, p0, relaxed, offset);
                NAME(row_dual, LANES)(relaxed, Wt, bias, &pl, p0, s, centre + sample[n] * box_size,
                                      radius + sample[n] * box_size, oy[n] * s - pad, ox[n] * s - pad, Hin, Win, m,
                                      dual + n * in_size);
            }
        }
        free(relaxed);
        free(m);
    }
}

/* One map of LANES members through a convolution: dst[o2][i][j] = bias[o2] + sum over c, ky, kx of
 * x[c][i*s + ky - pad][j*s + kx - pad] w[o2][c][ky][kx] (zero padding). ``x`` starts at member p0 and steps
 * ``xs`` floats from one pixel to the next; ``dst`` (step P) likewise; ``bias`` may be null. */
static inline void NAME(conv_map, LANES)(const float *x, int64_t xs, const float *Wt, const float *bias, int64_t P,
                                         int64_t p0, int64_t C, int64_t H, int64_t W, int64_t O2, int64_t k,
                                         int64_t s, int64_t pad, int64_t Ho, int64_t Wo, float *dst) {
    for (int64_t o2 = 0; o2 < O2; ++o2) {
        for (int64_t i = 0; i < Ho; ++i) {
            for (int64_t j = 0; j < Wo; ++j) {
                vec acc[VECS];
                for (int v = 0; v < VECS; ++v) acc[v] = bias ? *(const vec *)(bias + o2 * P + p0 + v * 8) : (vec){0};
                for (int64_t c = 0; c < C; ++c) {
                    for (int64_t ky = 0; ky < k; ++ky) {
                        const int64_t y = i * s + ky - pad;
                        if (y < 0 || y >= H) continue;
                        for (int64_t kx = 0; kx < k; ++kx) {
                            const int64_t xx = j * s + kx - pad;
                            if (xx < 0 || xx >= W) continue;
                            const float *xv = x + ((c * H + y) * W + xx) * xs;
                            const float *wv = Wt + (((o2 * C + c) * k + ky) * k + kx) * P + p0;
                            for (int v = 0; v < VECS; ++v)
                                acc[v] += *(const vec *)(xv + v * 8) * *(const vec *)(wv + v * 8);
                        }
                    }
                }
                for (int v = 0; v < VECS; ++v) *(vec *)(dst + ((o2 * Ho + i) * Wo + j) * P + v * 8) = acc[v];
            }
        }
    }
}

/* Per-member activations through a convolution with a weight set per member: x[N][C][H][W][P] ->
 * out[N][O2][Ho][Wo][P] (the interval steps of layers past the first). */
void NAME(gls_conv_members_forward, LANES)(const float *x, const float *Wt, const float *bias, float *out, int64_t P,
                                           int64_t N, int64_t C, int64_t H, int64_t W, int64_t O2, int64_t k,
                                           int64_t s, int64_t pad, int64_t Ho, int64_t Wo, int threads) {
    const int64_t blocks = P / LANES, in_p = C * H * W * P, out_p = O2 * Ho * Wo * P;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t p0 = b * LANES;
            NAME(conv_map, LANES)(x + n * in_p + p0, P, Wt, bias, P, p0, C, H, W, O2, k, s, pad, Ho, Wo,
                                  out + n * out_p + p0);
        }
    }
}

/* alpha-CROWN's slope gradient and the row's relaxed network one layer up, at each row's minimising corner.
 * Per row n and member: on the ReLU's map (O x H x W), with coefficient lam, pre-activation mu, lower slope ls
 * (per row) and upper line us, uo (per sample, map umap[n]):
 *   grad = lam > 0 ? lam mu : 0,   relaxed = lam > 0 ? ls mu : us mu + uo,
 * then next = bias + conv(relaxed) with weights Wt[O2][O][k][k][P], stride s, padding pad -> [O2][Ho][Wo].
 * All arrays members-last ([N][...][P]); the relaxed map lives only in a per-thread buffer. */
void NAME(gls_relax_forward, LANES)(const float *lam, const float *mu, const float *ls, const float *us,
                                    const float *uo, const int64_t *umap, const float *Wt, const float *bias,
                                    float *grad, float *next, int64_t P, int64_t N, int64_t O, int64_t H, int64_t W,
                                    int64_t O2, int64_t k, int64_t s, int64_t pad, int64_t Ho, int64_t Wo,
                                    int threads) {
    const int64_t blocks = P / LANES, map = O * H * W, map_p = map * P, out_p = O2 * Ho * Wo * P;
#pragma omp parallel num_threads(threads)
    {
        float *relaxed = scratch(map * LANES);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t p0 = b * LANES;
                const float *l = lam + n * map_p + p0, *m = mu + n * map_p + p0, *a = ls + n * map_p + p0;
                const float *u = us + umap[n] * map_p + p0, *o = uo ? uo + umap[n] * map_p + p0 : 0;
                float *g = grad + n * map_p + p0;
                for (int64_t q = 0; q < map; ++q) {
                    for (int v = 0; v < VECS; ++v) {
                        const int64_t at = q * P + v * 8;
                        const vec lv = *(const vec *)(l + at), mv = *(const vec *)(m + at);
                        const vec av = *(const vec *)(a + at), uv = *(const vec *)(u + at);
                        const ivec_t positive = lv > (vec){0};
                        const vec upper = o ? uv * mv + *(const vec *)(o + at) : uv * mv;
                        *(vec *)(g + at) = (vec)((ivec_t)(lv * mv) & positive);
                        *(vec *)(relaxed + q * LANES + v * 8) =
                            (vec)(((ivec_t)(av * mv) & positive) | ((ivec_t)upper & ~positive));
                    }
                }
                NAME(conv_map, LANES)(relaxed, LANES, Wt, bias, P, p0, O, H, W, O2, k, s, pad, Ho, Wo,
                                      next + n * out_p + p0);
            }
        }
        free(relaxed);
    }
}

#undef RELAX_ROW
#undef VECS
#undef NAME
#undef CAT
