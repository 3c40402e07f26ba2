// engine.num_threads must bound the CPU backend's GEMMs on the thread that calls them. The engine builds its
// backend on one thread and runs every step on its own engine thread; OpenMP's thread count is a per-thread
// setting, and OpenMP OpenBLAS sizes its team from the caller's, so a bound set only where the backend was
// built used to be lost (engine.num_threads=1 still ran GEMMs on every core).
#include <gtest/gtest.h>
#include <omp.h>

#include <memory>
#include <thread>
#include <vector>

#include "backend/backend.h"

// Weak: present when the engine links OpenBLAS, null otherwise.
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

namespace uniattn {
namespace {

TEST(CpuThreadsTest, GemmOnAnotherThreadKeepsTheBackendsThreadCount) {
    if (omp_get_num_procs() < 2) GTEST_SKIP() << "needs 2 or more cores to tell 1 thread from all";
    auto made = MakeBackend("cpu", 1);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    std::unique_ptr<Backend> be = std::move(made).value();

    const int64_t rows = 16, in = 64, out = 32;  // enough rows for the BLAS path
    std::vector<float> x(rows * in, 0.5f), w(out * in, 0.25f), y(rows * out, 0.0f);
    int omp_threads_after = 0, blas_threads_after = 0;
    std::thread engine_thread([&] {
        omp_set_num_threads(omp_get_num_procs());  // what a fresh thread inherits from OMP_NUM_THREADS/cores
        be->MatMul(MakeTensor(x.data(), DType::kF32, rows, in), MakeTensor(w.data(), DType::kF32, out, in),
                   MakeTensor(y.data(), DType::kF32, rows, out), false);
        omp_threads_after = omp_get_max_threads();
        blas_threads_after = openblas_get_num_threads != nullptr ? openblas_get_num_threads() : 1;
    });
    engine_thread.join();
    EXPECT_FLOAT_EQ(y[0], 64 * 0.5f * 0.25f);
    EXPECT_EQ(omp_threads_after, 1);
    EXPECT_EQ(blas_threads_after, 1);
}

}  // namespace
}  // namespace uniattn
