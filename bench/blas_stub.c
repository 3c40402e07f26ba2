/* A stand-in for libopenblas.so.0 in bench/gpu_serve.sh's carry (BLAS_STUB=1): the CUDA backend never calls
 * BLAS, and OpenBLAS with its Fortran runtime is 5 MB of the device tool's 64 MiB carry. Any BLAS call aborts
 * loudly instead of computing. */
#include <stdio.h>
#include <stdlib.h>

void cblas_sgemm(void) {
    fputs("blas_stub: cblas_sgemm called; this build carries no BLAS (bench/gpu_serve.sh BLAS_STUB=1)\n", stderr);
    abort();
}

void openblas_set_num_threads(int n) { (void)n; }
