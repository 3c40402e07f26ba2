// uniattn-kernel-bench: each CUDA backend op alone at the shapes of a real model (bench/configs), for
// finding where a decode step's time goes. Every op is timed over many back-to-back launches (median of
// repeats, host clock around a device sync), and reported with the bytes it must move and the achieved
// bandwidth against the measured device copy bandwidth.
//
//   uniattn-kernel-bench [--config bench/configs/llama2-7b.json] [--decode 1x512,16x4096] [--reps 50]
//                        [--attention-only | --fp8-gemm [--fp8-rows 1,16]]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels.h"
#include "kv/kv_cache.h"
#include "tools/cli.h"
#include "uniattn/model_config.h"
#include "util/file.h"

namespace uniattn {
namespace {

using Clock = std::chrono::steady_clock;

struct Bench {
    Backend* be;
    int reps;
    double copy_bw = 0;

    // The backend's stream and the default stream (direct kernel launches).
    void Sync() {
        be->Synchronize();
        cudaDeviceSynchronize();
    }
    // Seconds per call of fn: median over 5 rounds of `reps` back-to-back calls.
    double Time(const std::function<void()>& fn) {
        fn();
        Sync();
        std::vector<double> t;
        for (int round = 0; round < 5; ++round) {
            const auto t0 = Clock::now();
            for (int i = 0; i < reps; ++i) fn();
            Sync();
            t.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / reps);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
    void Report(const std::string& what, double s, double bytes) {
        std::printf("  %-58s %9.2f us", what.c_str(), s * 1e6);
        if (bytes > 0) std::printf("  %8.1f GB/s  %5.1f%% of copy", bytes / s / 1e9, 100.0 * bytes / s / copy_bw);
        std::printf("\n");
        std::fflush(stdout);
    }
};

std::unique_ptr<DeviceBuffer> Alloc(Backend* be, size_t bytes) {
    auto b = be->Alloc(bytes);
    if (!b.ok()) {
        std::fprintf(stderr, "%s\n", b.status().ToString().c_str());
        std::exit(1);
    }
    return std::move(b).value();
}

int Main(int argc, char** argv) {
    std::string path = "bench/configs/llama2-7b.json", decode = "1x512,16x4096,32x2048";
    int reps = 50;
    bool attention_only = false, fp8_gemm = false;
    std::vector<int64_t> fp8_rows = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048};
    CLI::App app{
        "Each CUDA backend op alone at the shapes of a real model (bench/configs), timed over back-to-back "
        "launches.",
        "uniattn-kernel-bench"};
    app.add_option("--config", path, "model config JSON")->capture_default_str();
    app.add_option("--decode", decode, "attention decode cases BxC, comma-separated")->capture_default_str();
    app.add_option("--reps", reps, "launches per timing round")->capture_default_str();
    app.add_flag("--attention-only", attention_only, "time the attention ops only");
    app.add_flag("--fp8-gemm", fp8_gemm,
                 "time only MatMul of each matrix with e4m3 weights beside fp16 ones, 1 to 2048 rows, under the FP8 "
                 "GEMM options (fast accumulation, timed cuBLASLt candidates), and the engine's mma.sync kernel at "
                 "1-64 rows");
    app.add_option("--fp8-rows", fp8_rows, "row counts of the --fp8-gemm table (1 to 2048)")
        ->delimiter(',')
        ->capture_default_str();
    if (auto code = ParseCommandLine(app, argc, argv, "uniattn-kernel-bench")) return *code;
    auto text = ReadFile(path);
    if (!text.ok()) return 1;
    auto cfg = ModelConfig::FromJson(*text, path);
    if (!cfg.ok() || !cfg->DeriveLayerKinds().ok()) return 1;
    const ModelConfig& c = *cfg;
    CudaBackendOptions cuda_cores;  // the rows without "tensor cores" time the CUDA-core decode kernels
    cuda_cores.tensor_core_attention = false;
    auto be_or = CreateCudaBackend(cuda_cores);
    if (!be_or.ok()) {
        std::fprintf(stderr, "%s\n", be_or.status().ToString().c_str());
        return 1;
    }
    Backend* be = be_or->get();
    CudaBackendOptions h1;
    h1.decode_heads_per_block = 1;
    h1.tensor_core_attention = false;
    auto beh_or = CreateCudaBackend(h1);
    if (!beh_or.ok()) return 1;
    Backend* beh = beh_or->get();
    CudaBackendOptions tc;
    tc.tensor_core_attention = true;
    auto bet_or = CreateCudaBackend(tc);
    if (!bet_or.ok()) return 1;
    Backend* bet = bet_or->get();
    // Tensor-core decode with larger minimum splits (CudaOptions::decode_min_chunk).
    std::vector<std::pair<int, std::unique_ptr<Backend>>> chunked;
    for (int mc : {64, 256, 512}) {
        CudaBackendOptions o;
        o.tensor_core_attention = true;
        o.decode_min_chunk = mc;
        auto r = CreateCudaBackend(o);
        if (!r.ok()) return 1;
        chunked.emplace_back(mc, std::move(r).value());
    }
    // Tensor-core decode with K/V staged in shared memory (CudaOptions::staged_decode_attention), at the default
    // splits and at 256-token ones.
    std::vector<std::pair<int, std::unique_ptr<Backend>>> staged;
    for (int mc : {0, 256}) {
        CudaBackendOptions o;
        o.tensor_core_attention = true;
        o.staged_decode_attention = true;
        o.decode_min_chunk = mc;
        auto r = CreateCudaBackend(o);
        if (!r.ok()) return 1;
        staged.emplace_back(mc, std::move(r).value());
    }
    Bench bench{be, reps};
    {
        const size_t bytes = size_t{1} << 30;
        auto a = Alloc(be, bytes), b = Alloc(be, bytes);
        be->FillUniform(a->data(), DType::kF32, bytes / 4, -1, 1, 1);
        bench.copy_bw = 2.0 * bytes / bench.Time([&] { be->CopyOnDevice(b->data(), a->data(), bytes); });
    }
    std::printf("%s: %s, copy %.1f GB/s\n", path.c_str(), be->Description().c_str(), bench.copy_bw / 1e9);

    const int64_t d = c.hidden_size, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
    const int64_t ff = c.intermediate_size;
    struct Mat {
        const char* name;
        int64_t out, in;
    };
    const Mat mats[] = {{"qkv", q_dim + 2 * kv_dim, d},
                        {"o", d, q_dim},
                        {"gate_up", 2 * ff, d},
                        {"down", d, ff},
                        {"lm_head", c.vocab_size, d}};
    const int64_t max_rows = fp8_gemm ? 2048 : 256;
    auto x = Alloc(be, sizeof(float) * max_rows * std::max(ff, d));
    auto y = Alloc(be, sizeof(float) * max_rows * std::max<int64_t>(2 * ff, c.vocab_size));
    be->FillUniform(x->data(), DType::kF32, max_rows * std::max(ff, d), -1, 1, 2);
    if (fp8_gemm) {
        // us per MatMul, fp16 weights (the default backend: 16-bit activations) against e4m3 weights with a scale
        // per row under each FP8 option set; GB/s counts the weight bytes once.
        struct Fp8Case {
            const char* name;
            CudaBackendOptions o;
        };
        // The default (the mma kernel at 1-16 rows, cuBLASLt FP8 beyond with the K split by shape), then cuBLASLt at
        // every row count of 3+ with the K split fixed (1: one GEMM), and fast accumulation.
        std::vector<Fp8Case> fp8_cases(6);
        fp8_cases[0].name = "fp8";
        for (int i = 1; i <= 4; ++i) {
            static const char* const kNames[] = {"fp8 lt split 1", "fp8 lt split 2", "fp8 lt split 4",
                                                 "fp8 lt split 8"};
            fp8_cases[i].name = kNames[i - 1];
            fp8_cases[i].o.fp8_split_k = 1 << (i - 1);
            fp8_cases[i].o.mma_gemm_max_rows = 0;
        }
        fp8_cases[5].name = "fp8 fast-accum";
        fp8_cases[5].o.fp8_fast_accum = true;
        // The engine's own mma.sync kernel for 1..64 rows (mma_gemm_max_rows): fp16 weights, and fp8 weights widened
        // in registers (16-bit activations).
        CudaBackendOptions mo;
        mo.mma_gemm_max_rows = 64;
        auto mma_or = CreateCudaBackend(mo);
        if (!mma_or.ok()) return 1;
        Backend* mma = mma_or->get();
        // The mma kernel with its input split fixed (engine.cuda.gemm_ksplit: 1 = none .. kRowGemmMaxSplits) against
        // the by-shape rule of the default, at the row counts where a decode step is bound by its weight bytes.
        const std::vector<int> mma_splits = {1, 2, 4, 8, 12, 16};
        std::vector<std::unique_ptr<Backend>> split_bes;
        for (int ks : mma_splits) {
            CudaBackendOptions so;
            so.mma_gemm_max_rows = 64;
            so.gemm_ksplit = ks;
            auto r = CreateCudaBackend(so);
            if (!r.ok()) return 1;
            split_bes.push_back(std::move(r).value());
        }
        std::vector<std::unique_ptr<Backend>> fp8_bes;
        for (const Fp8Case& fc : fp8_cases) {
            auto r = CreateCudaBackend(fc.o);
            if (!r.ok()) return 1;
            fp8_bes.push_back(std::move(r).value());
        }
        std::printf("MatMul, fp16 against e4m3 weights (us per call)\n");
        for (const Mat& m : mats) {
            auto w16 = Alloc(be, 2 * m.out * m.in);
            be->FillUniform(w16->data(), DType::kF16, m.out * m.in, -0.02f, 0.02f, 3);
            auto w8 = Alloc(be, m.out * m.in);
            be->FillUniform(w8->data(), DType::kF8E4M3, m.out * m.in, -448.0f, 448.0f, 3);
            auto sc = Alloc(be, sizeof(float) * m.out);
            be->FillUniform(sc->data(), DType::kF32, m.out, 2e-5f, 6e-5f, 4);
            const Tensor t16 = MakeTensor(w16->data(), DType::kF16, m.out, m.in);
            Tensor t8 = MakeTensor(w8->data(), DType::kF8E4M3, m.out, m.in);
            t8.scale = static_cast<const float*>(sc->data());
            t8.fp8_rows = true;
            for (int64_t T : fp8_rows) {
                if (T < 1 || T > max_rows) continue;
                const Tensor tx = MakeTensor(x->data(), DType::kF32, T, m.in);
                const Tensor ty = MakeTensor(y->data(), DType::kF32, T, m.out);
                const std::string at = std::string(m.name) + " T=" + std::to_string(T) + " [" + std::to_string(m.out) +
                                       "x" + std::to_string(m.in) + "] ";
                bench.Report(at + "fp16", bench.Time([&] { be->MatMul(tx, t16, ty, false); }), 2.0 * m.out * m.in);
                for (size_t i = 0; i < fp8_cases.size(); ++i) {
                    if (T <= 2 && i > 0) break;  // GEMVs: the FP8 GEMM options do not apply
                    Backend* fb = fp8_bes[i].get();
                    bench.Report(at + fp8_cases[i].name, bench.Time([&] { fb->MatMul(tx, t8, ty, false); }),
                                 1.0 * m.out * m.in);
                }
                if (T <= cuda::kRowGemmMaxRows) {
                    bench.Report(at + "fp16 mma", bench.Time([&] { mma->MatMul(tx, t16, ty, false); }),
                                 2.0 * m.out * m.in);
                    bench.Report(at + "fp8 mma", bench.Time([&] { mma->MatMul(tx, t8, ty, false); }),
                                 1.0 * m.out * m.in);
                }
                if (T == 1 || T == 16) {
                    for (size_t i = 0; i < mma_splits.size(); ++i) {
                        if (mma_splits[i] > m.in / 256) break;  // parts of at least one 256-input chunk
                        Backend* sb = split_bes[i].get();
                        bench.Report(at + "fp8 mma split " + std::to_string(mma_splits[i]),
                                     bench.Time([&] { sb->MatMul(tx, t8, ty, false); }), 1.0 * m.out * m.in);
                    }
                }
            }
        }
        return 0;
    }
    if (!attention_only) std::printf("MatMul (fp16 weights, fp32 activations)\n");
    for (const Mat& m : attention_only ? std::span<const Mat>() : std::span<const Mat>(mats)) {
        auto w = Alloc(be, 2 * m.out * m.in);
        be->FillUniform(w->data(), DType::kF16, m.out * m.in, -0.02f, 0.02f, 3);
        const Tensor tw = MakeTensor(w->data(), DType::kF16, m.out, m.in);
        const double wbytes = 2.0 * m.out * m.in;
        for (int64_t T : {1, 2, 16, 32, 64, 128, 256}) {
            const Tensor tx = MakeTensor(x->data(), DType::kF32, T, m.in);
            const Tensor ty = MakeTensor(y->data(), DType::kF32, T, m.out);
            const double s = bench.Time([&] { be->MatMul(tx, tw, ty, false); });
            bench.Report(std::string(m.name) + " T=" + std::to_string(T) + " [" + std::to_string(m.out) + "x" +
                             std::to_string(m.in) + "]",
                         s, wbytes);
        }
        // 16-bit activations (exact_activations off): one GEMM on the rounded rows instead of [x_hi; x_lo].
        {
            CudaBackendOptions fo;
            fo.exact_activations = false;
            auto fbe = CreateCudaBackend(fo);
            if (!fbe.ok()) return 1;
            for (int64_t T : {16, 32, 64}) {
                const Tensor tx = MakeTensor(x->data(), DType::kF32, T, m.in);
                const Tensor ty = MakeTensor(y->data(), DType::kF32, T, m.out);
                const double s = bench.Time([&] { (*fbe)->MatMul(tx, tw, ty, false); });
                bench.Report(std::string(m.name) + " T=" + std::to_string(T) + " 16-bit activations", s, wbytes);
            }
        }
        for (int ks : {1, 2, 4, 8}) {
            CudaBackendOptions ko;
            ko.gemm_ksplit = ks;
            auto kbe = CreateCudaBackend(ko);
            if (!kbe.ok()) return 1;
            for (int64_t T : {16, 32}) {
                const Tensor tx = MakeTensor(x->data(), DType::kF32, T, m.in);
                const Tensor ty = MakeTensor(y->data(), DType::kF32, T, m.out);
                const double s = bench.Time([&] { (*kbe)->MatMul(tx, tw, ty, false); });
                bench.Report(std::string(m.name) + " T=" + std::to_string(T) + " ksplit " + std::to_string(ks), s,
                             wbytes);
            }
        }
    }

    if (!attention_only) {
        std::printf(
            "GEMV variants (T=1, fp16 weights): per-warp rows; staged input with 1-8 warps per row (0: by shape)\n");
        auto g = Alloc(be, sizeof(float) * std::max(ff, d));
        be->FillUniform(g->data(), DType::kF32, std::max(ff, d), 0.5f, 1.5f, 11);
        for (const Mat& m : mats) {
            auto w = Alloc(be, 2 * m.out * m.in);
            be->FillUniform(w->data(), DType::kF16, m.out * m.in, -0.02f, 0.02f, 12);
            const double wbytes = 2.0 * m.out * m.in;
            const float* xf = static_cast<const float*>(x->data());
            float* yf = static_cast<float*>(y->data());
            bench.Report(std::string(m.name) + " gemv per-warp", bench.Time([&] {
                cuda::Gemv(xf, m.in, 1, w->data(), DType::kF16, m.in, m.out, m.in, yf, m.out, false, nullptr);
            }),
                         wbytes);
            for (int segs : {1, 2, 4, 8, 0}) {
                bench.Report(std::string(m.name) + " gemv staged segs " + std::to_string(segs), bench.Time([&] {
                    cuda::Gemv(xf, m.in, 1, w->data(), DType::kF16, m.in, m.out, m.in, yf, m.out, false, nullptr, true,
                               segs);
                }),
                             wbytes);
            }
            bench.Report(std::string(m.name) + " RmsNorm-fused gemv", bench.Time([&] {
                cuda::NormGemv(xf, m.in, static_cast<const float*>(g->data()), 1e-5f, 1, w->data(), DType::kF16, m.in,
                               m.out, m.in, yf, m.out, false, nullptr);
            }),
                         wbytes);
            bench.Report(std::string(m.name) + " SwiGLU-fused gemv", bench.Time([&] {
                cuda::SiluMulGemv(xf, 2 * m.in, 1, w->data(), DType::kF16, m.in, m.out, m.in, yf, m.out, false,
                                  nullptr);
            }),
                         wbytes);
        }
    }

    if (!attention_only) {
        std::printf("Small ops\n");
        auto w = Alloc(be, sizeof(float) * d);
        be->FillUniform(w->data(), DType::kF32, d, 0.5f, 1.5f, 4);
        for (int64_t T : {1, 16}) {
            const Tensor tx = MakeTensor(x->data(), DType::kF32, T, d);
            const Tensor ty = MakeTensor(y->data(), DType::kF32, T, d);
            bench.Report("RmsNorm T=" + std::to_string(T),
                         bench.Time([&] { be->RmsNorm(tx, MakeTensor(w->data(), DType::kF32, 1, d), 1e-5f, ty); }),
                         8.0 * T * d);
            const Tensor gu = MakeTensor(y->data(), DType::kF32, T, 2 * ff);
            const Tensor mo = MakeTensor(x->data(), DType::kF32, T, ff);
            bench.Report("SiluMul T=" + std::to_string(T), bench.Time([&] { be->SiluMul(gu, mo); }), 12.0 * T * ff);
        }
    }

    std::printf("Attention (per layer, %s KV)\n", DTypeName(be->KvDType()));
    std::vector<std::pair<int, int>> cases;
    for (const std::string& p : {decode}) {
        size_t at = 0;
        while (at < p.size()) {
            size_t comma = p.find(',', at);
            if (comma == std::string::npos) comma = p.size();
            const std::string item = p.substr(at, comma - at);
            const size_t xx = item.find('x');
            cases.emplace_back(std::stoi(item.substr(0, xx)), std::stoi(item.substr(xx + 1)));
            at = comma + 1;
        }
    }
    ModelConfig one = c;
    one.num_layers = 1;
    if (!one.DeriveLayerKinds().ok()) return 1;
    for (const auto& [B, ctx] : cases) {
        const int bs = 16, per_seq = (ctx + 1 + bs - 1) / bs;
        auto kv = KvCache::Create(be, one, bs, static_cast<int64_t>(B) * per_seq);
        if (!kv.ok()) return 1;
        const KvPlane k = (*kv)->K(0), v = (*kv)->V(0);
        const int64_t n = (*kv)->num_blocks() * bs * kv_dim;
        be->FillUniform(k.base, k.dtype, n, -1, 1, 5);
        be->FillUniform(v.base, v.dtype, n, -1, 1, 6);
        std::vector<int32_t> qs(B + 1), cl(B, ctx + 1), pos(B, ctx), tables(static_cast<size_t>(B) * per_seq);
        std::vector<int64_t> slots(B);
        for (int s = 0; s <= B; ++s) qs[s] = s;
        for (int s = 0; s < B; ++s) {
            for (int i = 0; i < per_seq; ++i) tables[s * per_seq + i] = i * B + s;
            slots[s] = static_cast<int64_t>(tables[s * per_seq + ctx / bs]) * bs + ctx % bs;
        }
        auto meta = Alloc(be, 4 * (qs.size() + cl.size() + pos.size() + tables.size()) + 8 * slots.size() +
                                  8 * static_cast<size_t>(c.head_dim / 2) + 96);
        char* mp = static_cast<char*>(meta->data());
        auto put = [&](const void* src, size_t bytes) {
            be->CopyToDevice(mp, src, bytes);
            char* at = mp;
            mp += (bytes + 15) / 16 * 16;
            return at;
        };
        AttentionBatch b;
        b.num_seqs = B;
        b.num_tokens = B;
        b.slot_mapping = reinterpret_cast<const int64_t*>(put(slots.data(), 8 * slots.size()));
        b.query_start = reinterpret_cast<const int32_t*>(put(qs.data(), 4 * qs.size()));
        b.context_len = reinterpret_cast<const int32_t*>(put(cl.data(), 4 * cl.size()));
        b.positions = reinterpret_cast<const int32_t*>(put(pos.data(), 4 * pos.size()));
        b.block_tables = reinterpret_cast<const int32_t*>(put(tables.data(), 4 * tables.size()));
        b.max_blocks_per_seq = per_seq;
        b.max_context_len = ctx + 1;
        b.max_query_len = 1;
        auto probs = Alloc(be, sizeof(float) * B * c.num_heads * (ctx + 1));
        auto q_buf = Alloc(be, sizeof(float) * B * q_dim), out_buf = Alloc(be, sizeof(float) * B * q_dim);
        const Tensor q = MakeTensor(q_buf->data(), DType::kF32, B, q_dim),
                     out = MakeTensor(out_buf->data(), DType::kF32, B, q_dim);
        be->FillUniform(q_buf->data(), DType::kF32, B * q_dim, -1, 1, 7);
        const double plane_bytes = static_cast<double>(B) * (ctx + 1) * kv_dim * DTypeBytes(k.dtype);
        const std::string tag = "B=" + std::to_string(B) + " ctx=" + std::to_string(ctx);
        bench.Report("Attention " + tag, bench.Time([&] { be->Attention(q, k, v, b, c.num_heads, out, nullptr); }),
                     2 * plane_bytes);
        bench.Report("Attention one head per block " + tag,
                     bench.Time([&] { beh->Attention(q, k, v, b, c.num_heads, out, nullptr); }), 2 * plane_bytes);
        bench.Report("ReuseAttention one head per block " + tag, bench.Time([&] {
            beh->ReuseAttention(static_cast<float*>(probs->data()), v, b, c.num_heads, out);
        }),
                     plane_bytes);
        bench.Report("Attention + probs (anchor) " + tag, bench.Time([&] {
            be->Attention(q, k, v, b, c.num_heads, out, static_cast<float*>(probs->data()));
        }),
                     2 * plane_bytes);
        bench.Report("ReuseAttention " + tag, bench.Time([&] {
            be->ReuseAttention(static_cast<float*>(probs->data()), v, b, c.num_heads, out);
        }),
                     plane_bytes);
        bench.Report("Attention tensor cores " + tag,
                     bench.Time([&] { bet->Attention(q, k, v, b, c.num_heads, out, nullptr); }), 2 * plane_bytes);
        bench.Report("Attention + probs (anchor) tensor cores " + tag, bench.Time([&] {
            bet->Attention(q, k, v, b, c.num_heads, out, static_cast<float*>(probs->data()));
        }),
                     2 * plane_bytes);
        bench.Report("ReuseAttention tensor cores " + tag, bench.Time([&] {
            bet->ReuseAttention(static_cast<float*>(probs->data()), v, b, c.num_heads, out);
        }),
                     plane_bytes);
        for (const auto& [mc, bs] : staged) {
            Backend* bsp = bs.get();
            const std::string sfx =
                std::string(" tensor cores staged") + (mc > 0 ? " min chunk " + std::to_string(mc) : "") + " " + tag;
            bench.Report("Attention" + sfx, bench.Time([&] { bsp->Attention(q, k, v, b, c.num_heads, out, nullptr); }),
                         2 * plane_bytes);
            bench.Report("ReuseAttention" + sfx, bench.Time([&] {
                bsp->ReuseAttention(static_cast<float*>(probs->data()), v, b, c.num_heads, out);
            }),
                         plane_bytes);
        }
        for (const auto& [mc, bc] : chunked) {
            Backend* bcp = bc.get();
            const std::string sfx = " tensor cores min chunk " + std::to_string(mc) + " " + tag;
            bench.Report("Attention" + sfx, bench.Time([&] { bcp->Attention(q, k, v, b, c.num_heads, out, nullptr); }),
                         2 * plane_bytes);
            bench.Report("ReuseAttention" + sfx, bench.Time([&] {
                bcp->ReuseAttention(static_cast<float*>(probs->data()), v, b, c.num_heads, out);
            }),
                         plane_bytes);
        }
        auto qkv_buf = Alloc(be, sizeof(float) * B * (q_dim + 2 * kv_dim));  // y holds 64 rows only
        const Tensor qkv = MakeTensor(qkv_buf->data(), DType::kF32, B, q_dim + 2 * kv_dim);
        const std::vector<double> inv_freq = c.RopeInvFreq();
        const auto* rope_table = reinterpret_cast<const double*>(put(inv_freq.data(), 8 * inv_freq.size()));
        bench.Report("RopeWriteKv " + tag, bench.Time([&] {
            be->RopeWriteKv(qkv.Cols(0, q_dim), qkv.Cols(q_dim, kv_dim), qkv.Cols(q_dim + kv_dim, kv_dim), k, v,
                            c.num_heads, b.positions, b.slot_mapping, rope_table);
        }),
                     0);
    }
    return 0;
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
