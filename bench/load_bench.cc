// uniattn-bench load: how fast a safetensors checkpoint becomes backend weights (TensorSet::OpenDir +
// LoadWeights + Synchronize), and a writer of seeded random checkpoints of a config's shapes to measure it on.
//
//   uniattn-bench load --write DIR --config bench/configs/llama2-7b.json [--layers N] [--file-dtype f16|bf16|f32]
//                      [--seed 1] [--shard-gb 10] [--uniattn 8/0/32 [--link-base STD_DIR]] [--tokenizer-from MODEL_DIR]
//   uniattn-bench load --model DIR [--backend cpu|cuda] [--dtype f16|bf16|f32] [--repeat 3] [--threads 0,1,8]
//                      [--chunk-mib 16] [--checksum]
//
// --write and --model may be given together (the checkpoint is written, then loaded). Every repeat loads the
// whole checkpoint again into fresh buffers; the first one also warms the page cache when it was cold, so the
// best of the repeats is the warm-cache figure. GB/s counts checkpoint bytes read (what a user's download
// weighs), and the line also names the bytes the backend holds (more when fp16 files load as fp32).
// --threads: LoadOptions::num_threads per case (0: the default, hardware threads up to 16).
// --checksum: copies every loaded buffer back and prints a 64-bit hash of them all (not timed): equal across
// thread counts and chunk sizes, and between backends holding the same dtype (cpu and cuda --dtype f32).
#include "bench/load_bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"
#include "model/weights.h"
#include "tools/cli.h"
#include "uniattn/json_io.h"
#include "uniattn/model_config.h"
#include "uniattn/safetensors.h"
#include "util/file.h"

namespace uniattn::bench {
namespace {

using Clock = std::chrono::steady_clock;

StatusOr<DType> DTypeFlag(const std::string& s) {
    if (s == "f16" || s == "fp16") return DType::kF16;
    if (s == "bf16") return DType::kBF16;
    if (s == "f32" || s == "fp32") return DType::kF32;
    return InvalidArgument("unknown dtype \"" + s + "\" (f16, bf16, f32)");
}

// SplitMix64 of (seed, index), as Backend::FillUniform draws.
inline uint64_t Mix(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

struct RandomTensor {
    TensorToGenerate spec;
    float lo = 0, hi = 0;
    uint64_t seed = 0;
    int64_t bytes() const {
        int64_t n = DTypeBytes(spec.dtype);
        for (int64_t d : spec.shape) n *= d;
        return n;
    }
};

// The Hugging Face tensors of `c` in the file order of real checkpoints, with the value ranges RandomWeights uses.
std::vector<RandomTensor> RandomTensors(const ModelConfig& c, DType dtype, uint64_t seed) {
    std::vector<RandomTensor> out;
    uint64_t stream = seed * 0x100000001B3ULL;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
        out.push_back({{name, dtype, std::move(shape)}, lo, hi, ++stream});
    };
    auto linear = [&](const std::string& name, int64_t rows, int64_t cols) {
        const float a = std::sqrt(3.0f / static_cast<float>(cols));
        add(name, {rows, cols}, -a, a);
    };
    const int64_t d = c.hidden_size, q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
    const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim, ff = c.intermediate_size;
    add("model.embed_tokens.weight", {c.vocab_size, d}, -1.0f, 1.0f);
    for (int l = 0; l < c.num_layers; ++l) {
        add(LayerTensorName(l, "input_layernorm.weight"), {d}, 0.8f, 1.2f);
        add(LayerTensorName(l, "post_attention_layernorm.weight"), {d}, 0.8f, 1.2f);
        linear(LayerTensorName(l, "self_attn.q_proj.weight"), q_dim, d);
        linear(LayerTensorName(l, "self_attn.k_proj.weight"), kv_dim, d);
        linear(LayerTensorName(l, "self_attn.v_proj.weight"), kv_dim, d);
        linear(LayerTensorName(l, "self_attn.o_proj.weight"), d, q_dim);
        if (c.qkv_bias) {
            add(LayerTensorName(l, "self_attn.q_proj.bias"), {q_dim}, -0.5f, 0.5f);
            add(LayerTensorName(l, "self_attn.k_proj.bias"), {kv_dim}, -0.5f, 0.5f);
            add(LayerTensorName(l, "self_attn.v_proj.bias"), {kv_dim}, -0.5f, 0.5f);
        }
        if (c.o_bias) add(LayerTensorName(l, "self_attn.o_proj.bias"), {d}, -0.5f, 0.5f);
        if (c.qk_norm) {
            add(LayerTensorName(l, "self_attn.q_norm.weight"), {c.head_dim}, 0.3f, 2.0f);
            add(LayerTensorName(l, "self_attn.k_norm.weight"), {c.head_dim}, 0.3f, 2.0f);
        }
        // UniAttn reuse layers: the compensation Wc (docs/uniattn.md §5); Q/K stay in the file as a
        // post-trained checkpoint keeps them (the loader skips them).
        // Their seeds come from a stream of their own, so the other tensors are the standard checkpoint's
        // (a UniAttn directory may link a standard one's shards: --link-base).
        if (c.has_grouping && c.layer_kinds[l] == LayerKind::kReuse) {
            const float a = std::sqrt(3.0f / static_cast<float>(d));
            out.push_back({{LayerTensorName(l, "v2_proj.weight"), dtype, {q_dim, d}},
                           -a,
                           a,
                           Mix(seed ^ 0x5632ULL, static_cast<uint64_t>(l))});
        }
        linear(LayerTensorName(l, "mlp.gate_proj.weight"), ff, d);
        linear(LayerTensorName(l, "mlp.up_proj.weight"), ff, d);
        linear(LayerTensorName(l, "mlp.down_proj.weight"), d, ff);
    }
    add("model.norm.weight", {d}, 0.8f, 1.2f);
    if (!c.tie_word_embeddings) linear("lm_head.weight", c.vocab_size, d);
    return out;
}

// The tokenizer and generation files a servable model directory carries beside its weights.
constexpr const char* kSideFiles[] = {"tokenizer.model",         "tokenizer.json",         "tokenizer_config.json",
                                      "special_tokens_map.json", "generation_config.json", "chat_template.jinja"};

bool IsV2(const std::string& name) {
    const std::string suffix = ".v2_proj.weight";
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Writes the shards (file name, tensors) in parallel, a thread per shard up to the hardware's threads.
Status WriteShards(const std::string& dir,
                   const std::vector<std::pair<std::string, std::vector<const RandomTensor*>>>& shards) {
    std::vector<Status> status(shards.size(), Status::Ok());
    std::atomic<size_t> next{0};
    auto work = [&] {
        for (size_t s = next++; s < shards.size(); s = next++) {
            const auto& part = shards[s].second;
            std::vector<TensorToGenerate> specs;
            for (const RandomTensor* t : part) specs.push_back(t->spec);
            status[s] =
                WriteSafetensors(dir + "/" + shards[s].first, specs, [&](size_t i, int64_t first, int64_t n, float* v) {
                    const RandomTensor& t = *part[i];
                    for (int64_t j = 0; j < n; ++j) {
                        const float u =
                            static_cast<float>(Mix(t.seed, static_cast<uint64_t>(first + j)) >> 40) * 0x1.0p-24f;
                        v[j] = t.lo + u * (t.hi - t.lo);
                    }
                });
            if (status[s].ok()) std::fprintf(stderr, "wrote %s/%s\n", dir.c_str(), shards[s].first.c_str());
        }
    };
    const size_t n = std::min<size_t>(shards.size(), std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (size_t i = 1; i < n; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    for (const Status& st : status) UA_RETURN_IF_ERROR(st);
    return Status::Ok();
}

// DIR/config.json and the tensors in shards of at most shard_bytes (one shard: model.safetensors), the shards
// written in parallel. `grouping` "G/B/E" (empty: standard) makes a UniAttn checkpoint: the grouping keys in
// config.json and a v2_proj per reuse layer. `link_base` (UniAttn only; empty: none): a standard checkpoint this
// writer made with the same config, layers, dtype and seed, whose shards are linked instead of written again (its
// tensors are the same values), so only the v2_proj tensors take new disk. `side_dir` (empty: link_base's, if
// any): a model directory whose tokenizer and generation files are copied, so that the result can be served.
Status WriteRandomCheckpoint(const std::string& dir, const std::string& config_path, int layers, DType dtype,
                             uint64_t seed, int64_t shard_bytes, const std::string& grouping,
                             const std::string& side_dir, const std::string& link_base) {
    UA_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
    UA_ASSIGN_OR_RETURN(ModelConfig base, ModelConfig::FromJson(text, config_path));
    if (base.has_grouping) {
        return InvalidArgument(config_path + ": has UniAttn grouping keys; pass the grouping with --uniattn instead");
    }
    if (layers > 0) base.num_layers = layers;
    base.torch_dtype = dtype == DType::kF32 ? "float32" : dtype == DType::kF16 ? "float16" : "bfloat16";
    const std::string std_json = DumpJson(base.ToJson(), 2) + "\n";
    if (!grouping.empty()) {
        int g = 0, b = 0, e = 0;
        char tail = 0;
        if (std::sscanf(grouping.c_str(), "%d/%d/%d%c", &g, &b, &e, &tail) != 3) {
            return InvalidArgument("--uniattn: expected G/B/E (e.g. 8/0/32), got \"" + grouping + "\"");
        }
        base.has_grouping = true;
        base.grouping_idx = g, base.grouping_begin_idx = b, base.grouping_end_idx = e;
    }
    const std::string json = DumpJson(base.ToJson(), 2) + "\n";
    UA_ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromJson(json, config_path));  // derives the layer kinds
    if (!link_base.empty()) {
        if (!c.has_grouping) return InvalidArgument("--link-base needs --uniattn");
        auto base_json = ReadFile(link_base + "/config.json");
        if (!base_json.ok() || *base_json != std_json) {
            return InvalidArgument("--link-base " + link_base +
                                   ": not a standard checkpoint of this config, layer count and dtype");
        }
    }
    UA_RETURN_IF_ERROR(MakeDirs(dir));
    UA_RETURN_IF_ERROR(WriteFile(dir + "/config.json", json));
    const std::string& sides = side_dir.empty() ? link_base : side_dir;
    if (!sides.empty()) {
        int copied = 0;
        for (const char* name : kSideFiles) {
            const std::string from = sides + "/" + name;
            if (!FileExists(from)) continue;
            UA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(from));
            UA_RETURN_IF_ERROR(WriteFile(dir + "/" + name, bytes));
            ++copied;
        }
        if (copied == 0 && !side_dir.empty()) {
            return InvalidArgument("--tokenizer-from " + side_dir + ": no tokenizer files there");
        }
    }

    const std::vector<RandomTensor> all = RandomTensors(c, dtype, seed);
    OrderedJson weight_map = OrderedJson::object();
    std::vector<std::pair<std::string, std::vector<const RandomTensor*>>> shards;
    int64_t total = 0;
    if (!link_base.empty()) {
        // The base's shards, linked; then one new shard with the v2_proj tensors.
        UA_ASSIGN_OR_RETURN(TensorSet base_set, TensorSet::OpenDir(link_base));
        std::vector<std::string> files;
        for (const auto& f : base_set.files()) {
            files.push_back(std::filesystem::path(f->path()).filename().string());
            for (const auto& [name, view] : f->tensors()) weight_map[name] = files.back();
        }
        const std::string abs_base = std::filesystem::absolute(link_base).string();
        for (const std::string& f : files) {
            const std::string link = dir + "/" + f;
            std::error_code ec;
            std::filesystem::remove(link, ec);
            std::filesystem::create_symlink(abs_base + "/" + f, link, ec);
            if (ec) return InvalidArgument(link + ": cannot link to " + abs_base + "/" + f + ": " + ec.message());
        }
        shards.emplace_back("model-uniattn-v2.safetensors", std::vector<const RandomTensor*>{});
        for (const RandomTensor& t : all) {
            if (!IsV2(t.spec.name)) continue;
            shards.back().second.push_back(&t);
            weight_map[t.spec.name] = shards.back().first;
        }
        for (const RandomTensor& t : all) total += t.bytes();
    } else {
        std::vector<std::vector<const RandomTensor*>> parts(1);
        int64_t in_shard = 0;
        for (const RandomTensor& t : all) {
            if (in_shard > 0 && in_shard + t.bytes() > shard_bytes) {
                parts.emplace_back();
                in_shard = 0;
            }
            parts.back().push_back(&t);
            in_shard += t.bytes();
            total += t.bytes();
        }
        for (size_t s = 0; s < parts.size(); ++s) {
            char name[64];
            std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, parts.size());
            const std::string file = parts.size() == 1 ? "model.safetensors" : name;
            for (const RandomTensor* t : parts[s]) weight_map[t->spec.name] = file;
            shards.emplace_back(file, std::move(parts[s]));
        }
    }
    const auto start = Clock::now();
    UA_RETURN_IF_ERROR(WriteShards(dir, shards));
    if (shards.size() > 1 || !link_base.empty()) {
        OrderedJson meta = OrderedJson::object();
        meta["total_size"] = total;
        OrderedJson index = OrderedJson::object();
        index["metadata"] = std::move(meta);
        index["weight_map"] = std::move(weight_map);
        UA_RETURN_IF_ERROR(WriteFile(dir + "/model.safetensors.index.json", DumpJson(index, 2) + "\n"));
    }
    std::printf("wrote %s: %d layers, %.2f GB of %s in %zu file(s)%s, %.1f s\n", dir.c_str(), c.num_layers, total / 1e9,
                DTypeName(dtype), shards.size(), link_base.empty() ? "" : " and the base's shards",
                std::chrono::duration<double>(Clock::now() - start).count());
    return Status::Ok();
}

struct LoadResult {
    double seconds = 0;         // OpenDir, LoadWeights (checks, reading, uploading) and Synchronize
    WeightLoadStats load;       // LoadWeights' own account
    int64_t backend_bytes = 0;  // ModelWeights::bytes
    uint64_t checksum = 0;      // with --checksum
};

// FNV-1a over 8-byte words (the tail zero-padded) of every buffer, in order, read back from the backend.
uint64_t Checksum(const ModelWeights& w, Backend* backend) {
    uint64_t h = 0xCBF29CE484222325ULL;
    std::vector<uint64_t> host;
    for (const auto& buf : w.buffers) {
        host.assign((buf->bytes() + 7) / 8, 0);
        backend->CopyToHost(host.data(), buf->data(), buf->bytes());
        for (uint64_t word : host) h = (h ^ word) * 0x100000001B3ULL;
    }
    return h;
}

StatusOr<LoadResult> LoadOnce(const std::string& dir, const ModelConfig& c, Backend* backend,
                              const LoadOptions& options, bool checksum) {
    const auto start = Clock::now();
    UA_ASSIGN_OR_RETURN(TensorSet tensors, TensorSet::OpenDir(dir));
    UA_ASSIGN_OR_RETURN(ModelWeights w, LoadWeights(tensors, c, backend, options));
    backend->Synchronize();
    LoadResult r;
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    r.load = w.load;
    r.backend_bytes = w.bytes;
    if (checksum) r.checksum = Checksum(w, backend);
    return r;
}

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-bench load: %s\n", s.message().c_str());
    return 1;
}

}  // namespace

int LoadBenchMain(int argc, char** argv) {
    std::string write_dir, model_dir, config_path = "bench/configs/llama2-7b.json", file_dtype_name = "f16";
    std::string backend_name = "cuda", dtype_name = "f16", grouping, side_dir, link_base;
    std::string threads_list = "0";
    int layers = 0, repeat = 3, chunk_mib = 16;
    bool checksum = false;
    uint64_t seed = 1;
    double shard_gb = 10;
    CLI::App app{"Checkpoint load speed: safetensors files to backend weights.", "uniattn-bench load"};
    app.add_option("--write", write_dir, "write a seeded random checkpoint of --config's shapes to this directory");
    app.add_option("--config", config_path, "model config JSON for --write")->capture_default_str();
    app.add_option("--layers", layers, "--write: this many layers instead of the config's (0: the config's)")
        ->capture_default_str();
    app.add_option("--file-dtype", file_dtype_name, "--write: the checkpoint's dtype")->capture_default_str();
    app.add_option("--seed", seed, "--write: seed of the random values")->capture_default_str();
    app.add_option("--shard-gb", shard_gb, "--write: largest shard in GB")->capture_default_str();
    app.add_option("--uniattn", grouping, "--write: a UniAttn checkpoint of this grouping G/B/E (e.g. 8/0/32)");
    app.add_option("--tokenizer-from", side_dir,
                   "--write: copy the tokenizer and generation files of this model directory (a servable model)");
    app.add_option("--link-base", link_base,
                   "--write with --uniattn: link this standard checkpoint's shards (written by --write with the same "
                   "config, layers, dtype and seed) and write only the v2_proj tensors");
    app.add_option("--model", model_dir, "load this checkpoint directory and time it");
    app.add_option("--backend", backend_name, "backend: cpu or cuda")->capture_default_str();
    app.add_option("--dtype", dtype_name, "the device backend's weight dtype")->capture_default_str();
    app.add_option("--repeat", repeat, "loads to time per --threads case")->capture_default_str();
    app.add_option("--threads", threads_list, "comma-separated loader thread counts (0: the default)")
        ->capture_default_str();
    app.add_option("--chunk-mib", chunk_mib, "LoadOptions::chunk_bytes in MiB")->capture_default_str();
    app.add_flag("--checksum", checksum, "print a hash of the loaded weights (read back, not timed)");
    if (auto code = ParseCommandLine(app, argc, argv, "uniattn-bench load")) return *code;
    if (write_dir.empty() && (!grouping.empty() || !side_dir.empty() || !link_base.empty())) {
        std::fprintf(stderr, "uniattn-bench load: --uniattn, --tokenizer-from and --link-base need --write\n");
        return 2;
    }
    if (write_dir.empty() && model_dir.empty()) {
        std::fprintf(stderr, "usage: uniattn-bench load [--write DIR --config FILE] [--model DIR] (--help)\n");
        return 2;
    }
    if (!write_dir.empty()) {
        auto fd = DTypeFlag(file_dtype_name);
        if (!fd.ok()) return Fail(fd.status());
        const auto shard_bytes = static_cast<int64_t>(shard_gb * 1e9);
        if (Status st = WriteRandomCheckpoint(write_dir, config_path, layers, *fd, seed, shard_bytes, grouping,
                                              side_dir, link_base);
            !st.ok()) {
            return Fail(st);
        }
    }
    if (model_dir.empty()) return 0;

    auto wd = DTypeFlag(dtype_name);
    if (!wd.ok()) return Fail(wd.status());
    auto be = MakeBackend(backend_name, 0, *wd);
    if (!be.ok()) return Fail(be.status());
    Backend* backend = be->get();
    auto config = Model::LoadConfig(model_dir);
    if (!config.ok()) return Fail(config.status());
    std::printf("uniattn-bench load %s on %s, weights %s\n", model_dir.c_str(), backend->Description().c_str(),
                DTypeName(backend->WeightDType()));
    if (chunk_mib <= 0) return Fail(InvalidArgument("--chunk-mib must be positive"));
    std::vector<int> thread_counts;
    for (size_t at = 0; at <= threads_list.size();) {
        const size_t comma = std::min(threads_list.find(',', at), threads_list.size());
        try {
            thread_counts.push_back(std::stoi(threads_list.substr(at, comma - at)));
        } catch (const std::exception&) {
            return Fail(InvalidArgument("--threads: expected comma-separated integers, got \"" + threads_list + "\""));
        }
        at = comma + 1;
    }
    for (int threads : thread_counts) {
        LoadOptions options;
        options.num_threads = threads;
        options.chunk_bytes = static_cast<size_t>(chunk_mib) << 20;
        double best = 0;
        int used = 0;
        for (int i = 0; i < repeat; ++i) {
            auto r = LoadOnce(model_dir, *config, backend, options, checksum);
            if (!r.ok()) return Fail(r.status());
            const double gbps = r->load.file_bytes / r->seconds / 1e9;
            best = std::max(best, gbps);
            used = r->load.num_threads;
            std::printf(
                "load %d: %.2f GB of checkpoint -> %.2f GB on %s in %.3f s (%.3f s reading and uploading): "
                "%.2f GB/s, %d threads, %d MiB chunks\n",
                i + 1, r->load.file_bytes / 1e9, r->backend_bytes / 1e9, backend->Name().c_str(), r->seconds,
                r->load.seconds, gbps, r->load.num_threads, chunk_mib);
            if (checksum) std::printf("checksum %016llx\n", static_cast<unsigned long long>(r->checksum));
            std::fflush(stdout);
        }
        std::printf("best of %d with %d threads: %.2f GB/s\n", repeat, used, best);
    }
    return 0;
}

}  // namespace uniattn::bench
