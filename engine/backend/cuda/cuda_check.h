// Fatal checks around every CUDA runtime and cuBLAS call: a failure prints the statement, the file, the
// line and the library's own message, then aborts. They guard invariants (a launch that cannot fail on
// valid arguments); conditions the environment can cause (no device, out of memory) are Status values.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

namespace uniattn::cuda {

[[noreturn]] inline void CudaFailed(const char* stmt, const char* file, int line, const char* what) {
    std::fprintf(stderr, "%s:%d: CUDA call failed: %s: %s\n", file, line, stmt, what);
    std::fflush(stderr);
    std::abort();
}

}  // namespace uniattn::cuda

#define UA_CUDA_CHECK(stmt)                                                                      \
    do {                                                                                         \
        const cudaError_t ua_err_ = (stmt);                                                      \
        if (ua_err_ != cudaSuccess) {                                                            \
            ::uniattn::cuda::CudaFailed(#stmt, __FILE__, __LINE__, cudaGetErrorString(ua_err_)); \
        }                                                                                        \
    } while (0)

#define UA_CUBLAS_CHECK(stmt)                                                                      \
    do {                                                                                           \
        const cublasStatus_t ua_st_ = (stmt);                                                      \
        if (ua_st_ != CUBLAS_STATUS_SUCCESS) {                                                     \
            ::uniattn::cuda::CudaFailed(#stmt, __FILE__, __LINE__, cublasGetStatusString(ua_st_)); \
        }                                                                                          \
    } while (0)

// After every kernel launch: a bad configuration (grid, shared memory) fails here, not at the next sync.
#define UA_CUDA_CHECK_LAUNCH(kernel_name) UA_CUDA_CHECK(cudaGetLastError())
