#include "backend/backend.h"

namespace uniattn {

Tensor MakeTensor(void* data, DType dtype, int64_t rows, int64_t cols) { return Tensor{data, dtype, rows, cols, cols}; }

Tensor Tensor::Cols(int64_t col, int64_t n) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + col * DTypeBytes(dtype);
    t.cols = n;
    return t;
}

Tensor Tensor::Rows(int64_t row, int64_t n) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + row * ld * DTypeBytes(dtype);
    t.rows = n;
    return t;
}

#ifdef UNIATTN_HAVE_CUDA
std::unique_ptr<Backend> MakeCudaBackend(int device);
#endif

bool HasBackend(const std::string& name) {
    if (name == "cpu") return true;
#ifdef UNIATTN_HAVE_CUDA
    if (name == "cuda") return true;
#endif
    return false;
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& name, int num_threads) {
    if (name == "cpu") return MakeCpuBackend(num_threads);
#ifdef UNIATTN_HAVE_CUDA
    if (name == "cuda") return MakeCudaBackend(0);
#endif
    return InvalidArgument("backend \"" + name + "\" is not available in this build (have: cpu" +
#ifdef UNIATTN_HAVE_CUDA
                           std::string(", cuda") +
#else
                           std::string() +
#endif
                           ")");
}

}  // namespace uniattn
