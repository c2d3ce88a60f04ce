/* mambaseg: fused selective scan for the CPU (forward and backward), float32 and float64.
 * Built on first use by mambaseg/ops/scan_native.py with the system C compiler and loaded with ctypes.
 * Compiled with -O3 -ffast-math so the inner loop over the state dimension vectorises and calls glibc's
 * vector exp (libmvec); the link step is separate so no fast-math start-up code changes the process's
 * floating-point mode. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAXN 256

int mambaseg_scan_abi_version(void) { return 3; }

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

void mambaseg_expf_array(const float *x, float *y, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = ms_expf(x[i]);
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
