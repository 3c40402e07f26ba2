// The CUDA backend: the op interface of backend/backend.h on one NVIDIA GPU. Weights in fp16/bf16 (or
// fp32) through cuBLAS with fp32 accumulation, KV planes in fp16/bf16/fp32 (or fp8 e4m3 with per-head scales),
// activations fp32.
// Not thread-safe: one backend is driven by one thread (the engine thread); all work goes to one stream. The
// exception is an Uploader (MakeUploader), whose Stage/Submit several loader threads call at once.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "uniattn/cuda_options.h"

namespace uniattn {

// What the engine asks of the CUDA backend: the device and tuning of engine.cuda.* (uniattn/cuda_options.h),
// and the dtypes weights and KV are held in.
struct CudaBackendOptions : CudaOptions {
    DType weight_dtype = DType::kF16;
    DType kv_dtype = DType::kF16;
};

// Unavailable when the build has CUDA but the machine has no usable device.
StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace uniattn
