// The engine's public API: the only engine header the server includes (with tokenizer.h, status.h,
// model_config.h). One engine thread owns every request, sequence and KV block; callers on any thread
// submit requests and read each request's event stream. See engine/README.md for the contract.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "uniattn/cuda_options.h"
#include "uniattn/generation_config.h"
#include "uniattn/model_config.h"
#include "uniattn/request.h"
#include "uniattn/status.h"
#include "uniattn/tokenizer.h"

namespace uniattn {

struct EngineConfig {
    std::string model_dir;
    std::string backend = "cpu";  // "cpu" or "cuda" (when compiled in)
    int num_threads = 0;          // CPU backend threads; 0 = all cores
    // Weights and KV on a device backend: "auto" (bfloat16 for a bfloat16 checkpoint, else float16),
    // "float16", "bfloat16" or "float32". The CPU backend computes in float32: "auto" or "float32" only.
    std::string dtype = "auto";
    // Linear weights rounded to fp8 e4m3 at load, a scale per output channel: "none" or "fp8" (docs/models.md
    // "FP8"). FP8 checkpoints (quantization_config) load as they are whatever this says. The cpu backend emulates
    // fp8 exactly (fp8 values held in fp32); the cuda backend stores e4m3 bytes with a scale per row.
    std::string quantization = "none";
    // The KV cache: "auto" (the backend's own: float32 on cpu, the weight dtype on cuda) or "fp8_e4m3" (alias
    // "fp8"), one byte per value with a scale per layer and KV head: the checkpoint's k_scale / v_scale when it
    // has them, else measured at load on a built-in passage (kv/kv_scales.h). cpu only for now.
    std::string kv_cache_dtype = "auto";
    // Ranks the model is split over (parallel/tensor_parallel.h): attention heads, KV heads and the MLP divided,
    // one thread and backend per rank (cuda: devices cuda.device + r, NCCL); 1 = no split.
    int tensor_parallel_size = 1;
    int block_size = 16;                    // tokens per KV block
    int64_t kv_cache_bytes = 0;             // KV pool size in bytes; 0 = use kv_cache_memory_fraction
    double kv_cache_memory_fraction = 0.1;  // of free device memory (CPU: of physical RAM) when bytes == 0
    int max_num_seqs = 64;                  // sequences per step
    int max_num_batched_tokens = 512;       // tokens per step (decodes + prefill chunks)
    int max_model_len = 0;                  // 0 = the model's max_position_embeddings
    bool enable_prefix_caching = true;
    int max_queued_requests = 1024;  // Submit returns kResourceExhausted past this many waiting requests
    // Where tokens are selected. kBackend: Backend::SampleRows (CUDA: logits stay on the device, only tokens
    // and logprobs reach the host; CPU: a batch's rows are selected in parallel on the backend's threads).
    // kHost: each Sampler on the engine thread, one row after another, on a host copy of the logits: the
    // oracle tests compare kBackend with. Both give the same tokens for the same logits and seed
    // (sampling/row_select.h).
    enum class SamplingPlace { kBackend, kHost };
    SamplingPlace sampling_place = SamplingPlace::kBackend;
    std::string model_name;  // served name; default: the directory's base name
    // The model's generation_config.json (eos ids, request defaults): "auto" reads MODEL/generation_config.json
    // when present, "none" ignores it (vLLM's `--generation-config vllm`), anything else names a directory
    // holding one.
    std::string generation_config = "auto";
    CudaOptions cuda;  // backend "cuda": device and kernel choices
};

// Per-request timings, for metrics (seconds; from the engine's clock).
struct RequestTimings {
    double queue_s = 0;    // submit -> first scheduled
    double ttft_s = 0;     // submit -> first token
    double prefill_s = 0;  // first scheduled -> first token
    double decode_s = 0;   // first token -> finish
    double e2e_s = 0;      // submit -> finish
    std::vector<double> inter_token_s;
    int prompt_tokens = 0;
    int generation_tokens = 0;
    FinishReason finish_reason = FinishReason::kStop;
    bool errored = false;
};

// What the engine thread reports; implementations must be fast and must not call back into the engine.
class EngineObserver {
  public:
    virtual ~EngineObserver() = default;
    virtual void OnRequestFinished(const RequestTimings& timings) = 0;
    // One scheduler step: tokens processed, time spent (seconds) by phase.
    virtual void OnStep(int num_prefill_tokens, int num_decode_tokens, double schedule_s, double forward_s,
                        double sample_s) = 0;
};

// The caller's end of one request. Thread-safe.
class RequestHandle {
  public:
    virtual ~RequestHandle() = default;
    virtual uint64_t id() const = 0;
    // Pops the next event; waits up to `timeout`. Returns false on timeout or when the stream is closed
    // and drained (then closed() is true).
    virtual bool Next(RequestEvent* event, std::chrono::milliseconds timeout) = 0;
    // Non-blocking pop.
    virtual bool TryNext(RequestEvent* event) = 0;
    virtual bool closed() const = 0;
    // Asks the engine to stop the request; its blocks are freed at the next step and the stream ends with
    // kFinished(kAbort) for every unfinished sample. Idempotent.
    virtual void Cancel() = 0;
    // Called (on the engine thread) whenever events become available; for asynchronous servers. Set it
    // before reading; it must not block.
    virtual void SetNotify(std::function<void()> notify) = 0;
};

struct EngineStats {
    int num_running = 0;
    int num_waiting = 0;
    int64_t num_blocks_total = 0;
    int64_t num_blocks_used = 0;    // owned by a running sequence (cached-but-free blocks not counted)
    int64_t num_blocks_cached = 0;  // free blocks still holding reusable prefix-cache content
    int64_t kv_bytes_used = 0;
    int64_t kv_bytes_total = 0;
    int64_t num_preemptions = 0;
    int64_t prefix_cache_queries = 0;  // tokens
    int64_t prefix_cache_hits = 0;     // tokens
    int64_t prompt_tokens = 0;
    int64_t generation_tokens = 0;
    int64_t steps = 0;
    double seconds_since_last_step = 0;  // for readiness: time since the engine loop last went round
    bool draining = false;
};

struct ModelInfo {
    std::string name;
    std::string dir;
    ModelConfig config;
    int max_model_len = 0;
    int block_size = 0;
    int64_t kv_bytes_per_token = 0;        // this model's layout, in the KV dtype
    int64_t kv_bytes_per_token_dense = 0;  // the same shape with every layer keeping K and V
    std::string backend;
    std::string dtype;  // weights / KV as the backend holds them (safetensors spelling: F32, F16, BF16)
    // Every id that ends a sample (unless ignore_eos): the tokenizer's eos, config.json's eos_token_id and
    // generation_config.json's, in that order, without repeats.
    std::vector<int32_t> eos_token_ids;
    // Request defaults from generation_config.json (EngineConfig::generation_config); front ends apply them.
    SamplingDefaults sampling_defaults;
};

class Engine {
  public:
    // Loads the model, sizes the KV pool, starts the engine thread.
    static StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config);
    virtual ~Engine() = default;  // stops the engine thread; unfinished requests end with kAbort

    // Validates and queues a request. Errors: kInvalidArgument (bad field, named), kFailedPrecondition
    // (prompt + max_tokens can never fit: message gives the prompt length and the limit),
    // kResourceExhausted (queue full), kUnavailable (draining or shut down).
    virtual StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request) = 0;
    virtual void SetObserver(std::shared_ptr<EngineObserver> observer) = 0;  // before the first Submit
    virtual const ModelInfo& model_info() const = 0;
    // What Submit checks requests against; front ends run the same checks (uniattn/request.h) first.
    virtual const RequestLimits& request_limits() const = 0;
    virtual const Tokenizer& tokenizer() const = 0;
    virtual EngineStats Stats() const = 0;
    // Stops admitting (Submit returns kUnavailable); running and queued requests continue.
    virtual void StartDraining() = 0;
    // True when no request is queued or running.
    virtual bool Idle() const = 0;
};

}  // namespace uniattn
