// A load-only test backend shared by the loader tests (weights_load_test.cc, fp8_weights_test.cc).
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace uniattn::testutil {

// A CPU backend that stores weights in `dtype` and keeps Backend's default (staging, copying) uploader:
// the loader's path on device backends, run on host memory; with fp8, it takes e4m3 weights as CUDA does
// (Backend::HoldsFp8Weights).
class StagingBackend final : public Backend {
  public:
    explicit StagingBackend(DType dtype, bool fp8 = false) : cpu_(MakeCpuBackend(1)), dtype_(dtype), fp8_(fp8) {}
    std::string Name() const override { return "staging"; }
    DType WeightDType() const override { return dtype_; }
    bool HoldsFp8Weights() const override { return fp8_; }
    StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(size_t bytes) override { return cpu_->Alloc(bytes); }
    void CopyToDevice(void* dst, const void* src, size_t bytes) override {
        ++copies_;
        cpu_->CopyToDevice(dst, src, bytes);
    }
    void CopyToHost(void* dst, const void* src, size_t bytes) override { cpu_->CopyToHost(dst, src, bytes); }
    void Fill(void* dst, int value, size_t bytes) override { cpu_->Fill(dst, value, bytes); }
    void Synchronize() override {}
    // The ops are never run: these tests only load.
    void Embedding(const int32_t*, int, const Tensor&, const Tensor&) override { std::abort(); }
    void RmsNorm(const Tensor&, const Tensor&, float, const Tensor&) override { std::abort(); }
    void MatMul(const Tensor&, const Tensor&, const Tensor&, bool) override { std::abort(); }
    void Rope(const Tensor&, int, int, const int32_t*, const double*) override { std::abort(); }
    void WriteKv(const Tensor&, const KvPlane&, const int64_t*) override { std::abort(); }
    void AddBias(const Tensor&, const Tensor&) override { std::abort(); }
    void HeadRmsNorm(const Tensor&, int, int, const Tensor&, float) override { std::abort(); }
    void Attention(const Tensor&, const KvPlane&, const KvPlane&, const AttentionBatch&, int, const Tensor&,
                   float*) override {
        std::abort();
    }
    void ReuseAttention(const float*, const KvPlane&, const AttentionBatch&, int, const Tensor&) override {
        std::abort();
    }
    void SiluMul(const Tensor&, const Tensor&) override { std::abort(); }
    void Add(const Tensor&, const Tensor&) override { std::abort(); }
    void GatherRows(const Tensor&, const int32_t*, int, const Tensor&) override { std::abort(); }

    int copies() const { return copies_; }

  private:
    std::unique_ptr<Backend> cpu_;
    DType dtype_;
    bool fp8_;
    int copies_ = 0;  // only under the uploader's lock
};

}  // namespace uniattn::testutil
