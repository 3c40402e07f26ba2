// uniattn-bench: the engine's layer loop (ModelRunner over a paged KvCache) on seeded random weights of
// real shapes, generated on the device (no checkpoint files), without the server.
//
//   uniattn-bench --config bench/configs/llama2-7b.json [--backend cuda] [--dtype f16|bf16|f32]
//                 [--kv-dtype f16|bf16|f32] [--variants std,8/0/32] [--decode 1x512,16x4096]
//                 [--batch 1,16 --ctx 512,4096] [--prefill 512,2048] [--steps 20] [--warmup 3]
//                 [--block-size 16] [--seed 1] [--json out.json] [--decode-heads-per-block 0|1]
//                 [--exact-activations 1|0] [--fp8-tensor-cores 1|0]
//                 [--fp8-outer-scales 1|0] [--fp8-fast-accum 1|0] [--fp8-algo-candidates N] [--fp8-split-k N]
//                 [--mma-gemm-max-rows N] [--pdl 1|0]
//                 [--fuse-gemv-inputs 0|1] [--stage-gemv-input 0|1]
//                 [--gemv-row-segs 0|1|2|4|8] [--fuse-attention-combine 1|0] [--tensor-core-attention 0|1]
//                 [--decode-min-chunk 0|64|128|...] [--fuse-mma-gemm-inputs 0|1] [--fp8-prefill-tensor-cores 0|1]
//                 [--sampling none|host|device] [--sampling-blocks-per-row N] [--staged-decode 0|1]
//
//   uniattn-bench serve --base-url http://127.0.0.1:8000 ...   (the serving benchmark: bench/serve_bench.h)
//   uniattn-bench load --model DIR ...                          (checkpoint load speed: bench/load_bench.cc)
//
// Variants: "std" (every layer normal) or "G/B/E" (UniAttn grouping, docs/uniattn.md §1). Decode cases are
// batch x context: each sequence holds `context` cached tokens (random K/V: decode cost does not depend on
// the values) and every step appends one token per sequence. Prefill cases run one sequence of N tokens
// in one chunk.
//
// --sampling: what a decode step does with its logits. none (the default): copies them to the host and
// stops there. host: copies them and runs the host Sampler per row (temperature 0.8, top-p 0.95). device:
// the same selection on the device (Backend::SampleRows), only tokens come back.
//
// Reported per case: decode ms per step (median), output tokens/s, KV bytes per token, bytes a step must
// read (weights except the embedding table, plus the KV of every cached token), achieved bytes/s and its
// fraction of the measured device copy bandwidth, and the floor (bytes / copy bandwidth) with the ratio
// to it; prefill tokens/s against the matrix-rate floor (2 · parameters FLOPs per token / measured GEMM
// rate through Backend::MatMul).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "bench/load_bench.h"
#include "kv/kv_cache.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/weights.h"
#include "sampling/sampler.h"
#include "tools/cli.h"
#include "uniattn/cuda_options.h"
#include "uniattn/json_io.h"
#include "util/file.h"
#ifdef UNIATTN_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#ifdef UNIATTN_HAVE_SERVE_BENCH
#include "bench/serve_bench.h"
#endif

namespace uniattn {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double Median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<std::string> Split(const std::string& s, char sep) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t end = s.find(sep, start);
        const std::string piece = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (!piece.empty()) out.push_back(piece);
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return out;
}

StatusOr<std::vector<int>> IntList(const std::string& s, const std::string& flag, int min_value = 1) {
    std::vector<int> out;
    for (const std::string& p : Split(s, ',')) {
        char* end = nullptr;
        const long v = std::strtol(p.c_str(), &end, 10);
        if (end == p.c_str() || *end != '\0' || v < min_value)
            return InvalidArgument("--" + flag + ": bad number \"" + p + "\"");
        out.push_back(static_cast<int>(v));
    }
    return out;
}

StatusOr<DType> DTypeFlag(const std::string& s) {
    if (s == "f16" || s == "fp16") return DType::kF16;
    if (s == "bf16") return DType::kBF16;
    if (s == "f32" || s == "fp32") return DType::kF32;
    return InvalidArgument("unknown dtype \"" + s + "\" (f16, bf16, f32)");
}

struct Variant {
    std::string name;
    bool uniattn = false;
    int g = 1, b = 0, e = 0;
    bool fp8 = false;  // ":fp8": e4m3 linear weights with per-row scales
};

StatusOr<Variant> ParseVariant(std::string s) {
    Variant v;
    v.name = s;
    if (s.size() > 4 && s.compare(s.size() - 4, 4, ":fp8") == 0) {
        v.fp8 = true;
        s.resize(s.size() - 4);
    }
    if (s == "std") return v;
    const std::vector<std::string> p = Split(s, '/');
    if (p.size() != 3) return InvalidArgument("variant \"" + s + "\": expected std or G/B/E");
    UA_ASSIGN_OR_RETURN(std::vector<int> gbe, IntList(p[0] + "," + p[1] + "," + p[2], "variants", 0));
    v.uniattn = true;
    v.g = gbe[0], v.b = gbe[1], v.e = gbe[2];
    return v;
}

StatusOr<std::unique_ptr<Backend>> MakeBenchBackend(const std::string& name, DType weights, DType kv,
                                                    const CudaOptions& cuda) {
#ifdef UNIATTN_HAVE_CUDA
    if (name == "cuda") {
        CudaBackendOptions o;
        static_cast<CudaOptions&>(o) = cuda;
        o.weight_dtype = weights;
        o.kv_dtype = kv;
        return CreateCudaBackend(o);
    }
#else
    (void)cuda;
#endif
    if (name == "cpu") {
        if (weights != DType::kF32 || kv != DType::kF32) return InvalidArgument("the cpu backend is fp32 only");
        return MakeCpuBackend(0);
    }
    return InvalidArgument("backend \"" + name + "\" is not available in this build");
}

// Device copy bandwidth: bytes read plus bytes written per second, large buffers, median of repeats.
double CopyBandwidth(Backend* be) {
    const size_t bytes = size_t{1} << 30;
    auto a = be->Alloc(bytes), b = be->Alloc(bytes);
    if (!a.ok() || !b.ok()) return 0;
    be->FillUniform((*a)->data(), DType::kF32, bytes / 4, -1, 1, 7);
    std::vector<double> t;
    for (int i = 0; i < 12; ++i) {
        be->Synchronize();
        const auto t0 = Clock::now();
        be->CopyOnDevice((*b)->data(), (*a)->data(), bytes);
        be->Synchronize();
        if (i >= 2) t.push_back(Seconds(t0, Clock::now()));
    }
    return 2.0 * bytes / Median(t);
}

// Matrix rate through the engine's own MatMul (fp32 activations in, weights in the bench dtype), FLOP/s.
double MatMulRate(Backend* be, DType wd, int64_t size) {
    const int64_t m = size, k = size, n = size;
    auto x = be->Alloc(sizeof(float) * m * k), w = be->Alloc(DTypeBytes(wd) * n * k),
         y = be->Alloc(sizeof(float) * m * n);
    if (!x.ok() || !w.ok() || !y.ok()) return 0;
    be->FillUniform((*x)->data(), DType::kF32, m * k, -1, 1, 8);
    be->FillUniform((*w)->data(), wd, n * k, -0.02f, 0.02f, 9);
    const Tensor tx = MakeTensor((*x)->data(), DType::kF32, m, k), tw = MakeTensor((*w)->data(), wd, n, k);
    const Tensor ty = MakeTensor((*y)->data(), DType::kF32, m, n);
    std::vector<double> t;
    for (int i = 0; i < 8; ++i) {
        be->Synchronize();
        const auto t0 = Clock::now();
        be->MatMul(tx, tw, ty, false);
        be->Synchronize();
        if (i >= 2) t.push_back(Seconds(t0, Clock::now()));
    }
    return 2.0 * m * n * k / Median(t);
}

struct Env {
    Backend* be;
    double copy_bw, matmul_rate;
    int steps, warmup, block_size;
    uint64_t seed;
    std::string sampling = "none";
    bool kv_fp8 = false;  // --kv-dtype fp8_e4m3: the cache in e4m3 with per-head scales of 1
};

// The benchmark's KV cache: the backend's dtype, or e4m3 (--kv-dtype fp8_e4m3) with every scale 1 (the random
// fills are e4m3 values in [-1, 1]).
StatusOr<std::unique_ptr<KvCache>> BenchKvCache(const Env& env, const ModelConfig& c, int64_t num_blocks) {
    if (!env.kv_fp8) return KvCache::Create(env.be, c, env.block_size, num_blocks);
    const KvScales scales = UniformKvScales(c, 1.0f, 1.0f);
    return KvCache::Create(env.be, c, env.block_size, num_blocks, DType::kF8E4M3, &scales);
}

// Parameters a decode step reads: every weight except the embedding table (only B rows of it are read;
// when tied it is the LM head and counted).
int64_t StepWeightBytes(const ModelConfig& c, const ModelWeights& w) {
    const int64_t embed = c.tie_word_embeddings ? 0 : w.embed.rows * w.embed.cols * DTypeBytes(w.embed.dtype);
    return w.bytes - embed;
}

// The matrix parameters a token's forward pass multiplies by.
int64_t ParamCount(const ModelWeights& w) {
    int64_t n = 0;
    for (const LayerWeights& l : w.layers) {
        for (const Tensor* t : {&l.w_qkv, &l.w_vc, &l.w_o, &l.w_gate_up, &l.w_down}) n += t->rows * t->cols;
    }
    return n + w.lm_head.rows * w.lm_head.cols;
}

Status RunDecode(const Env& env, const Model& model, int batch, int ctx, OrderedJson& out, std::string& table) {
    const ModelConfig& c = model.config;
    Backend* be = env.be;
    const int total = ctx + env.warmup + env.steps + 1;
    const int per_seq = (total + env.block_size - 1) / env.block_size;
    UA_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> kv, BenchKvCache(env, c, static_cast<int64_t>(batch) * per_seq));
    for (int l = 0; l < c.num_layers; ++l) {
        const int64_t n = kv->num_blocks() * env.block_size * c.num_kv_heads * c.head_dim;
        if (kv->HasK(l)) be->FillUniform(kv->K(l).base, kv->dtype(), n, -1, 1, env.seed + 100 + 2 * l);
        be->FillUniform(kv->V(l).base, kv->dtype(), n, -1, 1, env.seed + 101 + 2 * l);
    }
    ModelRunner runner(&model, be);
    std::vector<std::vector<int32_t>> blocks(batch);
    for (int s = 0; s < batch; ++s) {
        for (int i = 0; i < per_seq; ++i) blocks[s].push_back(i * batch + s);  // interleaved pages
    }
    std::vector<float> logits(static_cast<size_t>(batch) * c.vocab_size);
    std::vector<std::unique_ptr<Sampler>> samplers;
    for (int s = 0; s < batch && env.sampling != "none"; ++s) {
        SamplingParams sp;
        sp.temperature = 0.8f;
        sp.top_p = 0.95f;
        sp.want_logprob = false;
        samplers.push_back(std::make_unique<Sampler>(sp, env.seed + s));
    }
    std::vector<SampleRowParams> rows(batch);
    std::vector<LogitEdit> edits;
    std::vector<SampleRowResult> results(batch);
    const std::vector<int32_t> no_history;
    std::vector<double> times;
    for (int step = 0; step < env.warmup + env.steps; ++step) {
        ForwardInput in;
        for (int s = 0; s < batch; ++s) {
            in.AddSequence({(step * 31 + s * 17) % c.vocab_size}, ctx + step, blocks[s], env.block_size, true);
        }
        in.Finish();
        be->Synchronize();
        const auto t0 = Clock::now();
        if (env.sampling == "device") {
            UA_RETURN_IF_ERROR(runner.Forward(in, *kv, nullptr));
            for (int s = 0; s < batch; ++s) {
                samplers[s]->Prepare(c.vocab_size, no_history, no_history, &rows[s], &edits);
                rows[s].logits_row = s;
            }
            runner.SampleLogits(rows.data(), batch, edits.data(), 0, results.data());  // waits for the tokens
        } else {
            UA_RETURN_IF_ERROR(runner.Forward(in, *kv, logits.data()));  // ends with the logits copy: synchronous
            for (int s = 0; s < static_cast<int>(samplers.size()); ++s) {
                samplers[s]->Sample(logits.data() + static_cast<size_t>(s) * c.vocab_size, c.vocab_size, no_history,
                                    no_history);
            }
        }
        if (step >= env.warmup) times.push_back(Seconds(t0, Clock::now()));
    }
    const double step_s = Median(times);
    const int64_t kv_per_token = c.KvBytesPerToken(DTypeBytes(kv->dtype()));
    const double bytes = static_cast<double>(StepWeightBytes(c, model.weights)) +
                         static_cast<double>(kv_per_token) * batch * (ctx + env.warmup + env.steps / 2 + 1);
    const double floor_s = env.copy_bw > 0 ? bytes / env.copy_bw : 0;
    OrderedJson j = OrderedJson::object();
    j["batch"] = batch;
    j["context"] = ctx;
    j["sampling"] = env.sampling;
    j["ms_per_step"] = step_s * 1e3;
    j["ms_per_step_min"] = *std::min_element(times.begin(), times.end()) * 1e3;
    j["output_tokens_per_s"] = batch / step_s;
    j["kv_bytes_per_token"] = kv_per_token;
    j["bytes_per_step"] = bytes;
    j["achieved_bytes_per_s"] = bytes / step_s;
    j["fraction_of_copy_bandwidth"] = env.copy_bw > 0 ? bytes / step_s / env.copy_bw : 0;
    j["floor_ms"] = floor_s * 1e3;
    j["ratio_to_floor"] = floor_s > 0 ? step_s / floor_s : 0;
    out.push_back(std::move(j));
    char line[256];
    std::snprintf(
        line, sizeof(line),
        "  decode  B=%-4d ctx=%-6d %9.3f ms/step %10.1f tok/s  %7.1f GB/s (%4.1f%% of copy)  floor %8.3f ms  x%.3f%s\n",
        batch, ctx, step_s * 1e3, batch / step_s, bytes / step_s / 1e9,
        env.copy_bw > 0 ? 100 * bytes / step_s / env.copy_bw : 0.0, floor_s * 1e3, floor_s > 0 ? step_s / floor_s : 0.0,
        env.sampling == "none" ? "" : ("  sampling " + env.sampling).c_str());
    table += line;
    std::fputs(line, stdout);
    std::fflush(stdout);
    return Status::Ok();
}

Status RunPrefill(const Env& env, const Model& model, int tokens, OrderedJson& out, std::string& table) {
    const ModelConfig& c = model.config;
    Backend* be = env.be;
    const int per_seq = (tokens + env.block_size - 1) / env.block_size;
    UA_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> kv, BenchKvCache(env, c, per_seq));
    ModelRunner runner(&model, be);
    std::vector<int32_t> blocks, prompt(tokens);
    for (int i = 0; i < per_seq; ++i) blocks.push_back(per_seq - 1 - i);
    for (int i = 0; i < tokens; ++i) prompt[i] = (i * 7919) % c.vocab_size;
    std::vector<float> logits(c.vocab_size);
    std::vector<double> times;
    const int reps = std::max(2, env.steps / 4);
    for (int r = 0; r < 1 + reps; ++r) {
        ForwardInput in;
        in.AddSequence(prompt, 0, blocks, env.block_size, true);
        in.Finish();
        be->Synchronize();
        const auto t0 = Clock::now();
        UA_RETURN_IF_ERROR(runner.Forward(in, *kv, logits.data()));
        if (r >= 1) times.push_back(Seconds(t0, Clock::now()));
    }
    const double s = Median(times);
    const double flops = 2.0 * static_cast<double>(ParamCount(model.weights)) * tokens;
    const double floor_s = env.matmul_rate > 0 ? flops / env.matmul_rate : 0;
    OrderedJson j = OrderedJson::object();
    j["tokens"] = tokens;
    j["ms"] = s * 1e3;
    j["tokens_per_s"] = tokens / s;
    j["matmul_floor_ms"] = floor_s * 1e3;
    j["ratio_to_floor"] = floor_s > 0 ? s / floor_s : 0;
    out.push_back(std::move(j));
    char line[256];
    std::snprintf(line, sizeof(line), "  prefill T=%-6d %10.3f ms %12.1f tok/s  matmul floor %8.3f ms  x%.3f\n", tokens,
                  s * 1e3, tokens / s, floor_s * 1e3, floor_s > 0 ? s / floor_s : 0.0);
    table += line;
    std::fputs(line, stdout);
    std::fflush(stdout);
    return Status::Ok();
}

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-bench: %s\n", s.message().c_str());
    return 1;
}

int Main(int argc, char** argv) {
    std::string config_path = "bench/configs/llama2-7b.json", backend_name = "cuda", dtype_name = "f16", kv_dtype_name,
                variants_list = "std", decode_list, batch_list, ctx_list = "512", prefill_list, json_path,
                sampling = "none";
    int hpb = 0, exact = -1, fp8_tc = -1, fp8_outer = -1, fp8_fast = -1, fp8_cands = 0, fp8_split = 0, mma_rows = -1,
        pdl = 1, fuse = -1, stage = -1, segs = 0, fuse_combine = -1, tensor_cores = -1, min_chunk = 0, fuse_mma = -1,
        fp8_prefill_tc = -1, sample_parts = 0, staged = -1;
    int steps = 20, warmup = 3, block = 16;
    uint64_t seed = 1;
    CLI::App app{"Decode and prefill speed of the backends at the shapes of a model config (bench/configs).",
                 "uniattn-bench"};
    app.footer(
        "uniattn-bench serve --help: the serving benchmark (an OpenAI-compatible load generator).\n"
        "uniattn-bench load --help: checkpoint load speed.");
    app.add_option("--config", config_path, "model config JSON")->capture_default_str();
    app.add_option("--backend", backend_name, "backend: cpu or cuda")->capture_default_str();
    app.add_option("--dtype", dtype_name, "weight dtype")->capture_default_str();
    auto* kv_dtype_opt =
        app.add_option("--kv-dtype", kv_dtype_name, "KV cache dtype: f16, bf16, f32 or fp8_e4m3 (default: --dtype)");
    app.add_option("--variants", variants_list,
                   "comma-separated: std (every layer normal) or G/B/E (UniAttn grouping), either with :fp8 (e4m3 "
                   "linear weights with per-row scales)")
        ->capture_default_str();
    auto* decode_opt = app.add_option("--decode", decode_list, "decode cases BxC,... (default 1x512 without --batch)");
    auto* batch_opt = app.add_option("--batch", batch_list, "decode batch sizes, crossed with --ctx");
    app.add_option("--ctx", ctx_list, "decode context lengths for --batch")->capture_default_str();
    app.add_option("--prefill", prefill_list, "prefill token counts, comma-separated");
    app.add_option("--steps", steps, "timed steps per case")->capture_default_str();
    app.add_option("--warmup", warmup, "untimed steps per case")->capture_default_str();
    app.add_option("--block-size", block, "KV block size in tokens")->capture_default_str();
    app.add_option("--seed", seed, "seed for the random weights")->capture_default_str();
    auto* json_opt = app.add_option("--json", json_path, "write the results as JSON to this file");
    app.add_option("--decode-heads-per-block", hpb, "CUDA decode attention heads per block (0: the default)")
        ->capture_default_str();
    app.add_option("--sampling", sampling, "what a decode step does with its logits: none, host or device")
        ->capture_default_str();
    app.add_option("--exact-activations", exact,
                   "CUDA: exact (1) or 16-bit (0) activations (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--fp8-tensor-cores", fp8_tc,
                   "CUDA: fp8 weights in GEMMs of 3+ rows on FP8 tensor cores with per-token e4m3 activations (1) or "
                   "widened to 16 bits (0) (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--fp8-outer-scales", fp8_outer,
                   "CUDA: FP8 GEMMs apply the scales in cuBLASLt's epilogue (1) or in a kernel after (0) (-1: default)")
        ->capture_default_str();
    app.add_option("--fp8-fast-accum", fp8_fast,
                   "CUDA: FP8 GEMMs with cuBLASLt's fast accumulation (1) or fp32 promotion (0) (-1: default)")
        ->capture_default_str();
    app.add_option("--fp8-algo-candidates", fp8_cands,
                   "CUDA: cuBLASLt candidates timed per FP8 GEMM shape on first use (0: the default)")
        ->capture_default_str();
    app.add_option("--fp8-split-k", fp8_split,
                   "CUDA: FP8 GEMMs with the input dimension split in N parts (1: never; 0: the default, by shape)")
        ->capture_default_str();
    app.add_option(
           "--mma-gemm-max-rows", mma_rows,
           "CUDA: GEMMs of 1 to N rows on the engine's own mma.sync kernel (0: none; -1: the backend's default)")
        ->capture_default_str();
    app.add_option("--pdl", pdl, "CUDA: programmatic dependent launch on (1) or off (0)")->capture_default_str();
    app.add_option("--fuse-gemv-inputs", fuse, "CUDA: fuse GEMV inputs (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--stage-gemv-input", stage, "CUDA: stage the GEMV input (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--gemv-row-segs", segs, "CUDA: GEMV row segments (0: the default)")->capture_default_str();
    app.add_option("--fuse-attention-combine", fuse_combine,
                   "CUDA: fuse the split-KV attention combine (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--fuse-mma-gemm-inputs", fuse_mma,
                   "CUDA: the norm / SwiGLU / rounding fused into the mma GEMM's staging (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--fp8-prefill-tensor-cores", fp8_prefill_tc,
                   "CUDA: prefill over an fp8 KV cache on tensor cores (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--tensor-core-attention", tensor_cores,
                   "CUDA: decode attention on tensor cores (1) or CUDA cores (0) (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--staged-decode", staged,
                   "CUDA: GQA decode attention with K/V staged in shared memory (-1: the backend's default)")
        ->capture_default_str();
    app.add_option("--sampling-blocks-per-row", sample_parts,
                   "CUDA, --sampling device: blocks sharing one row (0: the backend's default)")
        ->capture_default_str();
    app.add_option("--decode-min-chunk", min_chunk,
                   "CUDA: fewest context tokens per decode attention split (0: the backend's default)")
        ->capture_default_str();
    if (auto code = ParseCommandLine(app, argc, argv, "uniattn-bench")) return *code;
    auto text = ReadFile(config_path);
    if (!text.ok()) return Fail(text.status());
    auto base = ModelConfig::FromJson(*text, config_path);
    if (!base.ok()) return Fail(base.status());
    auto wd = DTypeFlag(dtype_name);
    const bool kv_fp8 = kv_dtype_opt->count() && (kv_dtype_name == "fp8_e4m3" || kv_dtype_name == "fp8");
    auto kd = DTypeFlag(kv_dtype_opt->count() && !kv_fp8 ? kv_dtype_name : dtype_name);
    if (!wd.ok()) return Fail(wd.status());
    if (!kd.ok()) return Fail(kd.status());
    CudaOptions cuda;  // the flags left at -1 keep the backend's defaults
    cuda.decode_heads_per_block = hpb;
    if (exact >= 0) cuda.exact_activations = exact != 0;
    if (fp8_tc >= 0) cuda.fp8_tensor_cores = fp8_tc != 0;
    if (fp8_outer >= 0) cuda.fp8_outer_scales = fp8_outer != 0;
    if (fp8_fast >= 0) cuda.fp8_fast_accum = fp8_fast != 0;
    if (fp8_cands > 0) cuda.fp8_algo_candidates = fp8_cands;
    if (fp8_split > 0) cuda.fp8_split_k = fp8_split;
    if (mma_rows >= 0) cuda.mma_gemm_max_rows = mma_rows;
    cuda.pdl = pdl != 0;
    if (fuse >= 0) cuda.fuse_gemv_inputs = fuse != 0;
    if (stage >= 0) cuda.stage_gemv_input = stage != 0;
    cuda.gemv_row_segs = segs;
    if (fuse_combine >= 0) cuda.fuse_attention_combine = fuse_combine != 0;
    if (tensor_cores >= 0) cuda.tensor_core_attention = tensor_cores != 0;
    if (fuse_mma >= 0) cuda.fuse_mma_gemm_inputs = fuse_mma != 0;
    if (fp8_prefill_tc >= 0) cuda.fp8_prefill_tensor_cores = fp8_prefill_tc != 0;
    cuda.decode_min_chunk = min_chunk;
    if (sample_parts > 0) cuda.sampling_blocks_per_row = sample_parts;
    if (staged >= 0) cuda.staged_decode_attention = staged != 0;
    auto be = MakeBenchBackend(backend_name, *wd, *kd, cuda);
    if (!be.ok()) return Fail(be.status());

    std::vector<std::pair<int, int>> decode_cases;
    for (const std::string& p : Split(decode_opt->count() ? decode_list : batch_opt->count() ? "" : "1x512", ',')) {
        const size_t x = p.find('x');
        auto bc = IntList(x == std::string::npos ? "" : p.substr(0, x) + "," + p.substr(x + 1), "decode");
        if (!bc.ok() || bc->size() != 2) return Fail(InvalidArgument("--decode: expected BxC, got \"" + p + "\""));
        decode_cases.emplace_back((*bc)[0], (*bc)[1]);
    }
    if (batch_opt->count()) {
        auto batches = IntList(batch_list, "batch");
        auto ctxs = IntList(ctx_list, "ctx");
        if (!batches.ok()) return Fail(batches.status());
        if (!ctxs.ok()) return Fail(ctxs.status());
        for (int b : *batches) {
            for (int c : *ctxs) decode_cases.emplace_back(b, c);
        }
    }
    auto prefills = IntList(prefill_list, "prefill");
    if (!prefills.ok()) return Fail(prefills.status());
    std::vector<Variant> variants;
    for (const std::string& v : Split(variants_list, ',')) {
        auto pv = ParseVariant(v);
        if (!pv.ok()) return Fail(pv.status());
        variants.push_back(*pv);
    }
    Env env{be->get(), 0, 0, steps, warmup, block, seed};
    env.sampling = sampling;
    env.kv_fp8 = kv_fp8;
    if (env.sampling != "none" && env.sampling != "host" && env.sampling != "device") {
        return Fail(InvalidArgument("--sampling: none, host or device, got \"" + env.sampling + "\""));
    }
    env.copy_bw = CopyBandwidth(env.be);
    // 8192^3 on a device; 1024^3 on the CPU backend (8192^3 takes minutes there).
    env.matmul_rate = prefills->empty() ? 0 : MatMulRate(env.be, *wd, backend_name == "cpu" ? 1024 : 8192);
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    std::printf("uniattn-bench %s on %s, weights %s, KV %s, %s\n", config_path.c_str(), env.be->Description().c_str(),
                DTypeName(*wd), DTypeName(kv_fp8 ? DType::kF8E4M3 : *kd), date);
    std::printf("measured: device copy %.1f GB/s (read + write)%s\n", env.copy_bw / 1e9,
                env.matmul_rate > 0 ? (", MatMul " + std::to_string(env.matmul_rate / 1e12) + " TFLOP/s").c_str() : "");

    OrderedJson root = OrderedJson::object();
    root["config"] = config_path;
    root["device"] = env.be->Description();
    root["date"] = date;
    root["weight_dtype"] = DTypeName(*wd);
    root["kv_dtype"] = DTypeName(kv_fp8 ? DType::kF8E4M3 : *kd);
    root["copy_bandwidth_bytes_per_s"] = env.copy_bw;
    root["matmul_flops_per_s"] = env.matmul_rate;
    OrderedJson results = OrderedJson::array();
    std::string table;
    for (const Variant& v : variants) {
        ModelConfig c = *base;
        c.has_grouping = v.uniattn;
        c.grouping_idx = v.g, c.grouping_begin_idx = v.b, c.grouping_end_idx = v.e;
        if (Status st = c.DeriveLayerKinds(); !st.ok()) return Fail(st);
        Model model;
        model.config = c;
        auto w = RandomWeights(c, env.be, env.seed, v.fp8);
        if (!w.ok()) return Fail(w.status());
        model.weights = std::move(w).value();
        const int kv_elem = kv_fp8 ? 1 : DTypeBytes(*kd);
        const int64_t kv_tok = c.KvBytesPerToken(kv_elem);
        const int64_t dense_tok = c.DenseKvBytesPerToken(kv_elem);
        char head[256];
        std::snprintf(head, sizeof(head),
                      "%s: %d reuse layers, weights %.2f GB, KV %lld B/token (%.2f%% less than dense)\n",
                      v.name.c_str(), c.num_reuse_layers(), model.weights.bytes / 1e9, static_cast<long long>(kv_tok),
                      100.0 * (1.0 - static_cast<double>(kv_tok) / dense_tok));
        table += head;
        std::fputs(head, stdout);
        OrderedJson vr = OrderedJson::object();
        vr["variant"] = v.name;
        vr["reuse_layers"] = c.num_reuse_layers();
        vr["weight_bytes"] = model.weights.bytes;
        vr["kv_bytes_per_token"] = kv_tok;
        vr["dense_kv_bytes_per_token"] = dense_tok;
        OrderedJson dec = OrderedJson::array(), pre = OrderedJson::array();
        // A case whose KV cache or workspace does not fit the device is reported and skipped (Llama-2-7B's MHA
        // cache at 256 x 640 is 88 GB: more than an H100 holds); any other error ends the run.
        auto fits = [&](const Status& st, const std::string& what) {
            if (st.ok()) return true;
            if (st.code() != StatusCode::kResourceExhausted) return false;
            const std::string line = "  " + what + ": skipped, does not fit (" + st.message() + ")\n";
            table += line;
            std::fputs(line.c_str(), stdout);
            return true;
        };
        for (const auto& [b, ctx] : decode_cases) {
            const std::string what = "decode  B=" + std::to_string(b) + " ctx=" + std::to_string(ctx);
            if (Status st = RunDecode(env, model, b, ctx, dec, table); !fits(st, what)) return Fail(st);
        }
        for (int t : *prefills) {
            const std::string what = "prefill T=" + std::to_string(t);
            if (Status st = RunPrefill(env, model, t, pre, table); !fits(st, what)) return Fail(st);
        }
        vr["decode"] = std::move(dec);
        vr["prefill"] = std::move(pre);
        results.push_back(std::move(vr));
    }
    root["results"] = std::move(results);
    std::printf("\n==== summary (%s, %s) ====\n%s", env.be->Description().c_str(), date, table.c_str());
    if (json_opt->count()) {
        if (Status st = WriteFile(json_path, DumpJson(root, 2) + "\n"); !st.ok()) return Fail(st);
    }
    return 0;
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "load") return uniattn::bench::LoadBenchMain(argc - 1, argv + 1);
    if (argc > 1 && std::string(argv[1]) == "serve") {
#ifdef UNIATTN_HAVE_SERVE_BENCH
        return uniattn::bench::ServeBenchMain(argc - 1, argv + 1);
#else
        std::fprintf(stderr, "uniattn-bench: built without `serve` (needs Boost.Beast)\n");
        return 2;
#endif
    }
    return uniattn::Main(argc, argv);
}
