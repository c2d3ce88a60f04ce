/* mambaseg: fused selective scan for the CPU (forward and backward), float32 and float64.
 * Built on first use by mambaseg/ops/scan_native.py with the system C compiler and loaded with ctypes.
 * Compiled with -O3 -ffast-math so the inner loop over the state dimension vectorises and calls glibc's
 * vector exp (libmvec); the link step is separate so no fast-math start-up code changes the process's
 * floating-point mode. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAXN 256

int mambaseg_scan_abi_version(void) { return 4; }

int mambaseg_scan_uses_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* float32 exp: Cody-Waite range reduction x = k*ln2 + r, |r| <= ln2/2, then Cephes' degree-7 polynomial
 * (1 + r + r^2 * P5(r)) and 2^k built from the exponent bits. Branch-free, so `omp simd` loops vectorise it
 * inline (no libmvec call). Inputs are clamped to [-87.3, 88.7] (exp underflows to ~1e-38 / stays finite).
 * Measured error against float64 exp over [-87, 88]: below 2.5e-7 relative (about 2 ulp); tested in
 * tests/ops/test_cross_selective_scan.py through mambaseg_expf_array. */
static inline float ms_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float kf = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - kf * 0.693359375f;            /* ln2 split in a high part exact in float ... */
    r = r - kf * -2.12194440e-4f;               /* ... and the low remainder */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)kf + 127) << 23;
    return p * s.f;
}

/* float32 log1p(e) for e in [0, 1] (the softplus branch, e = exp(-|v|)): 2 atanh(s), s = e / (2 + e) <= 1/3,
 * odd series to s^15: relative error below 2e-7 at every e, no cancellation for tiny e (unlike log(1 + e)). */
static inline float ms_log1p01f(float e) {
    const float s = e / (2.0f + e), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}


#if defined(__AVX2__) && defined(__FMA__)
/* Hand-vectorised float32 recurrences for n = 16 (VMamba's d_state) on AVX2+FMA: the 16 states are two ymm
 * registers, and the per-step dot products with C (forward) or the per-step gradient sums (backward) are not
 * reduced step by step: 8 steps' partial vectors are transposed-and-summed at once (7 shuffles per 8 steps
 * instead of ~5 per step), which the compiler does not do for the generic loop. */
#include <immintrin.h>
#define MS_HAVE_AVX2 1

static inline __m256 ms_exp8(__m256 x) {   /* the same algorithm and constants as ms_expf */
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.7f)), _mm256_set1_ps(-87.3f));
    const __m256 kf = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(kf), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* out[s] = sum of the 8 lanes of a[s], s = 0..7 */
static inline __m256 ms_reduce8x8(const __m256 *a) {
    const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

static inline float ms_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Forward over one row (or one chunk of a row), n = 16 (see row_forward in scan_impl.inc for the contract). */
static void ms_row_forward16(const float *u, const float *dt, const float *A, const float *B, const float *C,
                             float Dv, int64_t l, float *y, float *xs, float *es, float *x) {
    const __m256 A0 = _mm256_loadu_ps(A), A1 = _mm256_loadu_ps(A + 8);
    __m256 x0 = x ? _mm256_loadu_ps(x) : _mm256_setzero_ps(), x1 = x ? _mm256_loadu_ps(x + 8) : _mm256_setzero_ps();
    int64_t t = 0;
#define MS_FWD_STEP(tt, ACC)                                                                                   \
    do {                                                                                                       \
        const __m256 dtv = _mm256_set1_ps(dt[tt]), duv = _mm256_set1_ps(dt[tt] * u[tt]);                       \
        const __m256 e0 = ms_exp8(_mm256_mul_ps(dtv, A0)), e1 = ms_exp8(_mm256_mul_ps(dtv, A1));               \
        x0 = _mm256_fmadd_ps(e0, x0, _mm256_mul_ps(duv, _mm256_loadu_ps(B + (tt) * 16)));                     \
        x1 = _mm256_fmadd_ps(e1, x1, _mm256_mul_ps(duv, _mm256_loadu_ps(B + (tt) * 16 + 8)));                 \
        if (xs) {                                                                                              \
            _mm256_storeu_ps(xs + (tt) * 16, x0); _mm256_storeu_ps(xs + (tt) * 16 + 8, x1);                    \
            _mm256_storeu_ps(es + (tt) * 16, e0); _mm256_storeu_ps(es + (tt) * 16 + 8, e1);                    \
        }                                                                                                      \
        ACC = _mm256_fmadd_ps(x1, _mm256_loadu_ps(C + (tt) * 16 + 8), _mm256_mul_ps(x0, _mm256_loadu_ps(C + (tt) * 16))); \
    } while (0)
    for (; t + 8 <= l; t += 8) {
        __m256 acc[8];
        for (int s = 0; s < 8; s++) MS_FWD_STEP(t + s, acc[s]);
        const __m256 ys = _mm256_fmadd_ps(_mm256_set1_ps(Dv), _mm256_loadu_ps(u + t), ms_reduce8x8(acc));
        _mm256_storeu_ps(y + t, ys);
    }
    for (; t < l; t++) {
        __m256 acc;
        MS_FWD_STEP(t, acc);
        y[t] = ms_hsum(acc) + Dv * u[t];
    }
#undef MS_FWD_STEP
    if (x) { _mm256_storeu_ps(x, x0); _mm256_storeu_ps(x + 8, x1); }
}

/* Backward over one row (or one chunk of a row), n = 16 (contract of row_backward in scan_impl.inc; xs/es from
 * ms_row_forward16). */
static void ms_row_backward16(const float *u, const float *dt, const float *sig, const float *A, const float *B,
                              const float *C, const float *dy, const float *xs, const float *es,
                              const float *xinit, float *gx, int64_t l, float *du, float *ddelta, float *dA,
                              float *dB, float *dC, float *dbias) {
    const __m256 A0 = _mm256_loadu_ps(A), A1 = _mm256_loadu_ps(A + 8);
    __m256 g0 = gx ? _mm256_loadu_ps(gx) : _mm256_setzero_ps();
    __m256 g1 = gx ? _mm256_loadu_ps(gx + 8) : _mm256_setzero_ps();
    const __m256 xi0 = xinit ? _mm256_loadu_ps(xinit) : _mm256_setzero_ps();
    const __m256 xi1 = xinit ? _mm256_loadu_ps(xinit + 8) : _mm256_setzero_ps();
    __m256 dA0 = _mm256_loadu_ps(dA), dA1 = _mm256_loadu_ps(dA + 8);
    float dbias_acc = 0;
    int64_t t = l - 1;
#define MS_BWD_STEP(tt, SA, SB)                                                                                \
    do {                                                                                                       \
        const float *Bt = B + (tt) * 16, *Ct = C + (tt) * 16, *xt = xs + (tt) * 16, *et = es + (tt) * 16;     \
        float *dBt = dB + (tt) * 16, *dCt = dC + (tt) * 16;                                                    \
        const __m256 dyv = _mm256_set1_ps(dy[tt]), dtv = _mm256_set1_ps(dt[tt]);                               \
        const __m256 dtu = _mm256_set1_ps(dt[tt] * u[tt]);                                                     \
        const __m256 k0 = _mm256_fmadd_ps(dyv, _mm256_loadu_ps(Ct), g0);                                      \
        const __m256 k1 = _mm256_fmadd_ps(dyv, _mm256_loadu_ps(Ct + 8), g1);                                  \
        _mm256_storeu_ps(dCt, _mm256_fmadd_ps(dyv, _mm256_loadu_ps(xt), _mm256_loadu_ps(dCt)));               \
        _mm256_storeu_ps(dCt + 8, _mm256_fmadd_ps(dyv, _mm256_loadu_ps(xt + 8), _mm256_loadu_ps(dCt + 8)));   \
        const __m256 e0 = _mm256_loadu_ps(et), e1 = _mm256_loadu_ps(et + 8);                                  \
        __m256 p0 = xi0, p1 = xi1;                                                                             \
        if ((tt) > 0) { p0 = _mm256_loadu_ps(xt - 16); p1 = _mm256_loadu_ps(xt - 8); }                        \
        const __m256 gde0 = _mm256_mul_ps(_mm256_mul_ps(k0, p0), e0);                                          \
        const __m256 gde1 = _mm256_mul_ps(_mm256_mul_ps(k1, p1), e1);                                          \
        const __m256 b0 = _mm256_loadu_ps(Bt), b1 = _mm256_loadu_ps(Bt + 8);                                  \
        SA = _mm256_fmadd_ps(gde1, A1, _mm256_mul_ps(gde0, A0));                                               \
        SB = _mm256_fmadd_ps(k1, b1, _mm256_mul_ps(k0, b0));                                                   \
        dA0 = _mm256_fmadd_ps(gde0, dtv, dA0);                                                                 \
        dA1 = _mm256_fmadd_ps(gde1, dtv, dA1);                                                                 \
        _mm256_storeu_ps(dBt, _mm256_fmadd_ps(k0, dtu, _mm256_loadu_ps(dBt)));                                \
        _mm256_storeu_ps(dBt + 8, _mm256_fmadd_ps(k1, dtu, _mm256_loadu_ps(dBt + 8)));                        \
        g0 = _mm256_mul_ps(k0, e0);                                                                            \
        g1 = _mm256_mul_ps(k1, e1);                                                                            \
    } while (0)
    /* steps l-1 .. down to a multiple of 8 one by one, then blocks of 8 (t0 .. t0+7, walked downwards) */
    for (; t >= 0 && ((t + 1) & 7); t--) {
        __m256 sa, sb;
        MS_BWD_STEP(t, sa, sb);
        const float a = ms_hsum(sa), bsum = ms_hsum(sb);
        du[t] += bsum * dt[t];
        const float dd = (a + bsum * u[t]) * sig[t];
        ddelta[t] = dd;
        dbias_acc += dd;
    }
    for (; t >= 7; t -= 8) {
        const int64_t t0 = t - 7;
        __m256 sa[8], sb[8];
        for (int s = 7; s >= 0; s--) MS_BWD_STEP(t0 + s, sa[s], sb[s]);
        const __m256 a = ms_reduce8x8(sa), bs = ms_reduce8x8(sb);
        const __m256 dtv = _mm256_loadu_ps(dt + t0), uv = _mm256_loadu_ps(u + t0);
        _mm256_storeu_ps(du + t0, _mm256_fmadd_ps(bs, dtv, _mm256_loadu_ps(du + t0)));
        const __m256 dd = _mm256_mul_ps(_mm256_fmadd_ps(bs, uv, a), _mm256_loadu_ps(sig + t0));
        _mm256_storeu_ps(ddelta + t0, dd);
        dbias_acc += ms_hsum(dd);
    }
#undef MS_BWD_STEP
    _mm256_storeu_ps(dA, dA0);
    _mm256_storeu_ps(dA + 8, dA1);
    if (gx) { _mm256_storeu_ps(gx, g0); _mm256_storeu_ps(gx + 8, g1); }
    *dbias += dbias_acc;
}
#endif

void mambaseg_expf_array(const float *x, float *y, int64_t n) {
    int64_t i = 0;
#ifdef MS_HAVE_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, ms_exp8(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++) y[i] = ms_expf(x[i]);
}

void mambaseg_log1p01f_array(const float *x, float *y, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = ms_log1p01f(x[i]);
}

#define REAL float
#define SUF(name) name##_f32
#define EXP ms_expf
#define LOG1P log1pf
#define FAST_SOFTPLUS 1
#include "scan_impl.inc"
#include "cross_impl.inc"
#undef REAL
#undef SUF
#undef EXP
#undef LOG1P
#undef FAST_SOFTPLUS

#define REAL double
#define FAST_SOFTPLUS 0
#define SUF(name) name##_f64
#define EXP exp
#define LOG1P log1p
#include "scan_impl.inc"
#include "cross_impl.inc"
