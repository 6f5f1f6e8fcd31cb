/* nfvi's compiled CPU kernels (nfvi/native/__init__.py builds and loads them).

   Planar, radial and Householder stacks, forward and hand-derived backward, one example at
   a time (planar's and Householder's forwards: one block of ROWS examples at a time).

   The C twin of the torch loops in nfvi/flows/fused.py (whose docstring has the formulas):
   the same maps and gradients, computed row by row so that a row's K layers run in the
   cache with no per-layer dispatch. Built on first use by nfvi/native/__init__.py with the
   system C compiler and called through ctypes on tensors' memory; the torch loops stay the
   reference and the fallback (CUDA, no compiler, torch.func transforms).

   Layout. z, outputs: [N, D] row-major (contiguous). Parameters: [K, P, D] (or [K, P, 1])
   with element strides (sk, sp) for the layer and row axes and a unit stride along D; row r
   of z reads parameter row (P == 1 ? 0 : r % P): P = N per example, P = 1 shared (global
   parameters, whose gradients are summed over the rows), P = B < N for N = S B samples laid
   out sample-major (the importance-weighted NLL's S samples of B test points). Gradients
   of the parameters: contiguous [K, P, D] / [K, P], zeroed by the caller. Saved for the
   backward: zin [K, N, D] (planar: each layer's input; radial: d = z - c) and h [K, N]
   (planar: tanh(a); radial: r); NULL: nothing saved (no graph to record). */

#include <math.h>
#include <float.h>
#include <stddef.h>
#include <stdlib.h>

/* rows per block of planar's forward: each layer runs over a block of rows before the next
   layer, so that the rows' independent chains (w^T z -> tanh -> z += h u, which one row runs
   in sequence K times) overlap in the CPU: 1.4-1.6x faster (69 -> 41 ns per row and layer
   at the IS pass's shape). The per-row arithmetic and the order of every sum are those of
   one row at a time, so the results are bit-equal to it. The backwards and radial's
   forward, timed the same way, gained nothing (0.9-1.05x) and stay row by row. */
#define ROWS 8

#define DEFINE_STACKS(T, SUF, TINY, LOG, TANH, SQRT, FABS, LOG1P, EXP)                        \
                                                                                           \
/* four partial sums: independent chains the CPU can overlap (D = 40: 10 each) */          \
static T dot_##SUF(const T *a, const T *b, long D) {                                       \
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                      \
    long j = 0;                                                                            \
    for (; j + 4 <= D; j += 4) {                                                           \
        s0 += a[j] * b[j];                                                                 \
        s1 += a[j + 1] * b[j + 1];                                                         \
        s2 += a[j + 2] * b[j + 2];                                                         \
        s3 += a[j + 3] * b[j + 3];                                                         \
    }                                                                                      \
    for (; j < D; ++j) s0 += a[j] * b[j];                                                  \
    return (s0 + s1) + (s2 + s3);                                                          \
}                                                                                          \
                                                                                           \
static T log_abs_##SUF(T x) {                                                              \
    T a = FABS(x);                                                                         \
    return LOG(a < TINY ? TINY : a);                                                       \
}                                                                                          \
                                                                                           \
/* scale / x, the gradient of scale * log|x|: 0 below the clamp, as the torch code */      \
static T inv_abs_##SUF(T x, T scale) {                                                     \
    return FABS(x) >= TINY ? scale / x : (T)0;                                             \
}                                                                                          \
                                                                                           \
void planar_forward_##SUF(long N, long P, long K, long D, const T *z0,                     \
                          const T *w, long swk, long swp, const T *u, long suk, long sup,  \
                          const T *b, long sbk, long sbp, T *zout, T *ld, T *zin, T *h) {  \
    /* rows sharing parameters (P < N) share s = w^T u_hat: once per parameter row */     \
    T *sk = P < N ? (T *)malloc(sizeof(T) * K * P) : NULL;                                 \
    if (sk)                                                                                \
        for (long k = 0; k < K; ++k)                                                       \
            for (long p = 0; p < P; ++p)                                                   \
                sk[k * P + p] = dot_##SUF(w + k * swk + p * swp, u + k * suk + p * sup, D); \
    for (long r0 = 0; r0 < N; r0 += ROWS) {                                                \
        long n = N - r0 < ROWS ? N - r0 : ROWS, p[ROWS];                                   \
        T acc[ROWS], a[ROWS], s[ROWS], hs[ROWS];                                           \
        for (long i = 0; i < n; ++i) {                                                     \
            p[i] = P == 1 ? 0 : (r0 + i) % P;                                              \
            acc[i] = 0;                                                                    \
        }                                                                                  \
        T *z = zout + r0 * D;                                                              \
        for (long j = 0; j < n * D; ++j) z[j] = z0[r0 * D + j];                            \
        for (long k = 0; k < K; ++k) {                                                     \
            for (long i = 0; i < n; ++i) {                                                 \
                const T *wk = w + k * swk + p[i] * swp, *uk = u + k * suk + p[i] * sup;    \
                s[i] = sk ? sk[k * P + p[i]] : dot_##SUF(wk, uk, D);                       \
                if (zin) {                                                                 \
                    T *zi = zin + (k * N + r0 + i) * D;                                    \
                    for (long j = 0; j < D; ++j) zi[j] = z[i * D + j];                     \
                }                                                                          \
                a[i] = dot_##SUF(z + i * D, wk, D) + b[k * sbk + p[i] * sbp];              \
            }                                                                              \
            for (long i = 0; i < n; ++i) hs[i] = TANH(a[i]);                               \
            for (long i = 0; i < n; ++i) {                                                 \
                const T *uk = u + k * suk + p[i] * sup;                                    \
                T hk = hs[i], *zr = z + i * D;                                             \
                if (h) h[k * N + r0 + i] = hk;                                             \
                for (long j = 0; j < D; ++j) zr[j] += hk * uk[j];                          \
                acc[i] += log_abs_##SUF((T)1 + ((T)1 - hk * hk) * s[i]);                   \
            }                                                                              \
        }                                                                                  \
        for (long i = 0; i < n; ++i) ld[r0 + i] = acc[i];                                  \
    }                                                                                      \
    free(sk);                                                                              \
}                                                                                          \
                                                                                           \
/* torch's softplus (threshold 20: x itself above it) and its derivative */                \
static T softplus_##SUF(T x) { return x > (T)20 ? x : LOG1P(EXP(x)); }                    \
static T dsoftplus_##SUF(T x) { return x > (T)20 ? (T)1 : (T)1 / ((T)1 + EXP(-x)); }      \
                                                                                           \
/* planar's invertibility constraint for the K x P parameter rows (w, u: row (k, p) at      \
   k * sk + p * sp; uhat: contiguous [K, P, D]): s = w^T u, n = max(w^T w, tiny),           \
   m = scale (softplus(s + shift) - 1), c = (m - s) / n, uhat = u + c w */                  \
void planar_constrain_##SUF(long K, long P, long D, T shift, T scale, const T *w,          \
                            long swk, long swp, const T *u, long suk, long sup, T *uhat) { \
    for (long k = 0; k < K; ++k)                                                           \
        for (long p = 0; p < P; ++p) {                                                     \
            const T *wi = w + k * swk + p * swp, *ui = u + k * suk + p * sup;              \
            T s = dot_##SUF(wi, ui, D), n = dot_##SUF(wi, wi, D);                          \
            T m = scale * (softplus_##SUF(s + shift) - (T)1);                              \
            T c = (m - s) / (n < TINY ? TINY : n);                                         \
            T *o = uhat + (k * P + p) * D;                                                 \
            for (long j = 0; j < D; ++j) o[j] = ui[j] + c * wi[j];                         \
        }                                                                                  \
}                                                                                          \
                                                                                           \
/* its backward: G = dL/duhat in, dL/du and dL/dw out (gu, gw; all three contiguous       \
   [K, P, D]): with a = (G^T w) (m' - 1) / n and c as above,                                \
   dL/du = G + a w,  dL/dw = c G + a u - 2 (G^T w) (c / n) w  (no n term below the clamp) */ \
void planar_constrain_backward_##SUF(long K, long P, long D, T shift, T scale, const T *w, \
                                     long swk, long swp, const T *u, long suk, long sup,   \
                                     const T *G, T *gu, T *gw) {                           \
    for (long k = 0; k < K; ++k)                                                           \
        for (long p = 0; p < P; ++p) {                                                     \
            const T *restrict wi = w + k * swk + p * swp, *restrict ui = u + k * suk + p * sup; \
            long o = (k * P + p) * D;                                                      \
            const T *restrict gi = G + o;                                                  \
            T *restrict gui = gu + o, *restrict gwi = gw + o;                              \
            T s = dot_##SUF(wi, ui, D), n = dot_##SUF(wi, wi, D);                          \
            T gdw = dot_##SUF(gi, wi, D);                                                  \
            int clamped = n < TINY;                                                        \
            T nn = clamped ? TINY : n;                                                     \
            T m = scale * (softplus_##SUF(s + shift) - (T)1);                              \
            T dm = scale * dsoftplus_##SUF(s + shift);                                     \
            T c = (m - s) / nn, a = gdw * (dm - (T)1) / nn;                                \
            T bw = clamped ? (T)0 : (T)-2 * gdw * c / nn;                                  \
            for (long j = 0; j < D; ++j) {                                                 \
                gui[j] = gi[j] + a * wi[j];                                                \
                gwi[j] = c * gi[j] + a * ui[j] + bw * wi[j];                               \
            }                                                                              \
        }                                                                                  \
}                                                                                          \
                                                                                           \
void planar_backward_##SUF(long N, long P, long K, long D, const T *gz, const T *gld,      \
                           const T *w, long swk, long swp, const T *u, long suk, long sup, \
                           const T *zin, const T *h, T *g0, T *gw, T *gu, T *gb) {         \
    for (long r = 0; r < N; ++r) {                                                         \
        long p = P == 1 ? 0 : r % P;                                                       \
        T *restrict g = g0 + r * D;                                                        \
        for (long j = 0; j < D; ++j) g[j] = gz[r * D + j];                                 \
        T l = gld[r];                                                                      \
        for (long k = K - 1; k >= 0; --k) {                                                \
            const T *restrict wk = w + k * swk + p * swp;                                  \
            const T *restrict uk = u + k * suk + p * sup;                                  \
            const T *restrict zi = zin + (k * N + r) * D;                                  \
            T *restrict gwk = gw + (k * P + p) * D, *restrict guk = gu + (k * P + p) * D;  \
            T hk = h[k * N + r], hp = (T)1 - hk * hk, s = dot_##SUF(wk, uk, D);            \
            T q_hp = inv_abs_##SUF((T)1 + hp * s, l) * hp;                                 \
            T da = hp * dot_##SUF(g, uk, D) - (T)2 * q_hp * hk * s;                        \
            for (long j = 0; j < D; ++j) {                                                 \
                gwk[j] += da * zi[j] + q_hp * uk[j];                                       \
                guk[j] += hk * g[j] + q_hp * wk[j];                                        \
                g[j] += da * wk[j];                                                        \
            }                                                                              \
            gb[k * P + p] += da;                                                           \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
void radial_forward_##SUF(long N, long P, long K, long D, const T *z0,                     \
                          const T *c, long sck, long scp, const T *alpha, long sak,        \
                          long sap, const T *beta, long sbk, long sbp, T *zout, T *ld,     \
                          T *dsave, T *rsave) {                                            \
    T d[D];                                                                                \
    for (long r = 0; r < N; ++r) {                                                         \
        long p = P == 1 ? 0 : r % P;                                                       \
        T *z = zout + r * D;                                                               \
        for (long j = 0; j < D; ++j) z[j] = z0[r * D + j];                                 \
        T acc = 0;                                                                         \
        for (long k = 0; k < K; ++k) {                                                     \
            const T *ck = c + k * sck + p * scp;                                           \
            T a = alpha[k * sak + p * sap], bt = beta[k * sbk + p * sbp];                  \
            for (long j = 0; j < D; ++j) d[j] = z[j] - ck[j];                              \
            T rr = SQRT(dot_##SUF(d, d, D));                                               \
            if (dsave) {                                                                   \
                T *ds = dsave + (k * N + r) * D;                                           \
                for (long j = 0; j < D; ++j) ds[j] = d[j];                                 \
                rsave[k * N + r] = rr;                                                     \
            }                                                                              \
            T hh = (T)1 / (a + rr), bh = bt * hh;                                          \
            for (long j = 0; j < D; ++j) z[j] += bh * d[j];                                \
            acc += (T)(D - 1) * log_abs_##SUF((T)1 + bh)                                   \
                   + log_abs_##SUF((T)1 + bh - bh * hh * rr);                              \
        }                                                                                  \
        ld[r] = acc;                                                                       \
    }                                                                                      \
}                                                                                          \
                                                                                           \
void radial_backward_##SUF(long N, long P, long K, long D, const T *gz, const T *gld,      \
                           const T *alpha, long sak, long sap, const T *beta, long sbk,    \
                           long sbp, const T *dsave, const T *rsave, T *g0, T *gc,         \
                           T *galpha, T *gbeta) {                                          \
    for (long r = 0; r < N; ++r) {                                                         \
        long p = P == 1 ? 0 : r % P;                                                       \
        T *g = g0 + r * D;                                                                 \
        for (long j = 0; j < D; ++j) g[j] = gz[r * D + j];                                 \
        T l = gld[r];                                                                      \
        for (long k = K - 1; k >= 0; --k) {                                                \
            const T *dk = dsave + (k * N + r) * D;                                         \
            T *gck = gc + (k * P + p) * D;                                                 \
            T a = alpha[k * sak + p * sap], bt = beta[k * sbk + p * sbp];                  \
            T rr = rsave[k * N + r], hh = (T)1 / (a + rr);                                 \
            T h2 = hh * hh, hr = hh * rr, bh = bt * hh, t1 = (T)1 + bh;                    \
            T e1 = inv_abs_##SUF(t1, l * (T)(D - 1));                                      \
            T e2 = inv_abs_##SUF((T)1 + bh - bh * hr, l);                                  \
            T l_h = bt * (e1 + e2 * ((T)1 - (T)2 * hr));                                   \
            T l_beta = hh * (e1 + e2 * ((T)1 - hr));                                       \
            T r_inv = rr > 0 ? (T)1 / rr : (T)0;                                           \
            T pp = -h2 * bt * r_inv, qq = (-e2 * bt * h2 - h2 * l_h) * r_inv;              \
            T gd = dot_##SUF(g, dk, D);                                                    \
            T coef = qq + gd * pp;                                                         \
            for (long j = 0; j < D; ++j) {                                                 \
                gck[j] -= bh * g[j] + coef * dk[j];                                        \
                g[j] = t1 * g[j] + coef * dk[j];                                           \
            }                                                                              \
            galpha[k * P + p] -= h2 * (l_h + bt * gd);                                     \
            gbeta[k * P + p] += l_beta + hh * gd;                                          \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* Householder reflections (Tomczak & Welling 2016), layer k: a = v^T z,                   \
   n = max(v^T v, tiny), z <- z - (2 a / n) v; log|det| = 0 (ld is zeroed). nr: v^T v per  \
   parameter row, [K, P] at strides (snk, snp). Saved: zin (each layer's input) and        \
   a [K, N]. A block of ROWS rows runs layer by layer, as planar's forward does. */        \
void householder_forward_##SUF(long N, long P, long K, long D, const T *z0,                \
                               const T *v, long svk, long svp, const T *nr, long snk,      \
                               long snp, T *zout, T *ld, T *zin, T *asave) {               \
    for (long r0 = 0; r0 < N; r0 += ROWS) {                                                \
        long n = N - r0 < ROWS ? N - r0 : ROWS, p[ROWS];                                   \
        T c[ROWS];                                                                         \
        for (long i = 0; i < n; ++i) p[i] = P == 1 ? 0 : (r0 + i) % P;                     \
        T *z = zout + r0 * D;                                                              \
        for (long j = 0; j < n * D; ++j) z[j] = z0[r0 * D + j];                            \
        for (long k = 0; k < K; ++k) {                                                     \
            for (long i = 0; i < n; ++i) {                                                 \
                const T *vk = v + k * svk + p[i] * svp;                                    \
                T nk = nr[k * snk + p[i] * snp];                                           \
                if (zin) {                                                                 \
                    T *zi = zin + (k * N + r0 + i) * D;                                    \
                    for (long j = 0; j < D; ++j) zi[j] = z[i * D + j];                     \
                }                                                                          \
                T a = dot_##SUF(z + i * D, vk, D);                                         \
                if (asave) asave[k * N + r0 + i] = a;                                      \
                c[i] = (T)2 * a / (nk < TINY ? TINY : nk);                                 \
            }                                                                              \
            for (long i = 0; i < n; ++i) {                                                 \
                const T *vk = v + k * svk + p[i] * svp;                                    \
                T *zr = z + i * D;                                                         \
                for (long j = 0; j < D; ++j) zr[j] -= c[i] * vk[j];                        \
            }                                                                              \
        }                                                                                  \
        for (long i = 0; i < n; ++i) ld[r0 + i] = 0;                                       \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* its backward, g = dL/dz_k in, s = g^T v: dL/dz_{k-1} = g - (2 s / n) v and              \
   dL/dv = -(2 / n) (s z_{k-1} + a g) + (4 a s / n^2) v (no n term below the clamp);       \
   gv contiguous [K, P, D], zeroed by the caller */                                        \
void householder_backward_##SUF(long N, long P, long K, long D, const T *gz, const T *v,   \
                                long svk, long svp, const T *nr, long snk, long snp,       \
                                const T *zin, const T *asave, T *g0, T *gv) {              \
    for (long r = 0; r < N; ++r) {                                                         \
        long p = P == 1 ? 0 : r % P;                                                       \
        T *restrict g = g0 + r * D;                                                        \
        for (long j = 0; j < D; ++j) g[j] = gz[r * D + j];                                 \
        for (long k = K - 1; k >= 0; --k) {                                                \
            const T *restrict vk = v + k * svk + p * svp;                                  \
            const T *restrict zi = zin + (k * N + r) * D;                                  \
            T *restrict gvk = gv + (k * P + p) * D;                                        \
            T nraw = nr[k * snk + p * snp], nk = nraw < TINY ? TINY : nraw;                \
            T a = asave[k * N + r], s = dot_##SUF(g, vk, D);                               \
            T cz = (T)-2 * s / nk, cg = (T)-2 * a / nk;                                    \
            T cv = nraw < TINY ? (T)0 : (T)4 * a * s / (nk * nk);                          \
            for (long j = 0; j < D; ++j) {                                                 \
                gvk[j] += cz * zi[j] + cg * g[j] + cv * vk[j];                             \
                g[j] += cz * vk[j];                                                        \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

/* Maxout's window maximum: v [R, pool] row-major -> m [R] (NaN-propagating, as
   torch.maximum); its backward sends g [R] to every entry equal to its window's max. */
#define MAX_NAN(a, b) ((a) > (b) || (a) != (a) ? (a) : (b)) /* torch.maximum: NaN wins */
#define DEFINE_MAXOUT(T, SUF)                                                              \
void window_max_##SUF(long R, long pool, const T *v, T *m) {                               \
    if (pool == 4) { /* the shipped pool: branch-free, so the compiler vectorizes rows */   \
        for (long r = 0; r < R; ++r) {                                                     \
            const T *x = v + 4 * r;                                                        \
            T a = MAX_NAN(x[1], x[0]), b = MAX_NAN(x[3], x[2]);                            \
            m[r] = MAX_NAN(b, a);                                                          \
        }                                                                                  \
        return;                                                                            \
    }                                                                                      \
    for (long r = 0; r < R; ++r) {                                                         \
        const T *x = v + r * pool;                                                         \
        T mx = x[0];                                                                       \
        for (long i = 1; i < pool; ++i)                                                    \
            mx = MAX_NAN(x[i], mx);                                                        \
        m[r] = mx;                                                                         \
    }                                                                                      \
}                                                                                          \
                                                                                           \
void window_max_backward_##SUF(long R, long pool, const T *v, const T *m, const T *g,      \
                               T *out) {                                                   \
    if (pool == 4) {                                                                       \
        for (long r = 0; r < R; ++r) {                                                     \
            const T *x = v + 4 * r;                                                        \
            T *o = out + 4 * r, mr = m[r], gr = g[r];                                      \
            o[0] = x[0] == mr ? gr : (T)0;                                                 \
            o[1] = x[1] == mr ? gr : (T)0;                                                 \
            o[2] = x[2] == mr ? gr : (T)0;                                                 \
            o[3] = x[3] == mr ? gr : (T)0;                                                 \
        }                                                                                  \
        return;                                                                            \
    }                                                                                      \
    for (long r = 0; r < R; ++r)                                                           \
        for (long i = 0; i < pool; ++i)                                                    \
            out[r * pool + i] = v[r * pool + i] == m[r] ? g[r] : (T)0;                     \
}

DEFINE_MAXOUT(float, f32)
DEFINE_MAXOUT(double, f64)

DEFINE_STACKS(float, f32, FLT_MIN, logf, tanhf, sqrtf, fabsf, log1pf, expf)
DEFINE_STACKS(double, f64, DBL_MIN, log, tanh, sqrt, fabs, log1p, exp)

/* the interface's version: native.py refuses a library whose version differs */
int nfvi_kernels_version(void) { return 3; }
