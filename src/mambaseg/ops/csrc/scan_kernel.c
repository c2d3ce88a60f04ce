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

int mambaseg_scan_abi_version(void) { return 2; }

int mambaseg_scan_uses_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define REAL float
#define SUF(name) name##_f32
#define EXP expf
#define LOG1P log1pf
#include "scan_impl.inc"
#undef REAL
#undef SUF
#undef EXP
#undef LOG1P

#define REAL double
#define SUF(name) name##_f64
#define EXP exp
#define LOG1P log1p
#include "scan_impl.inc"
