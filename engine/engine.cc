// Engine::Create and the engine thread. The contract (threads, ownership, invariants, data path, request
// state machine) is engine/README.md; keep the two in step.
#include "uniattn/engine.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "engine_setup.h"
#include "kv/block_manager.h"
#include "kv/kv_cache.h"
#include "kv/kv_scales.h"
#include "model/forward.h"
#include "model/model.h"
#include "parallel/tensor_parallel.h"
#include "request/inbox.h"
#include "request/request_clock.h"
#include "request/sample_output.h"
#include "sampling/sampler.h"
#include "scheduler/scheduler.h"
#include "uniattn/safetensors.h"
#include "util/file.h"

namespace uniattn {

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One of a request's n samples (engine thread only): its sequence, its sampler, its output.
struct SampleState {
    uint64_t seq_id = 0;  // 0 until forked from sample 0, and again once ended
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<SampleOutput> output;
};

// A request the engine thread is working on.
struct ActiveRequest {
    uint64_t id = 0;
    GenerationRequest request;
    std::shared_ptr<RequestHandleImpl> handle;
    int max_new_tokens = 0;
    std::vector<SampleState> samples;
    int num_done = 0;
    int cached_tokens = 0;
    bool errored = false;
    std::unique_ptr<RequestClock> clock;
    std::vector<RequestEvent> outbox;  // this step's events, delivered together at the end of the step
};

class EngineImpl final : public Engine {
  public:
    EngineImpl() : inbox_(std::make_shared<Inbox>()) {}
    ~EngineImpl() override;

    Status Init(const EngineConfig& config);
    StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request) override;
    void SetObserver(std::shared_ptr<EngineObserver> observer) override {
        std::lock_guard<std::mutex> lock(observer_mu_);
        observer_ = std::move(observer);
    }
    const ModelInfo& model_info() const override { return info_; }
    const RequestLimits& request_limits() const override { return limits_; }
    const Tokenizer& tokenizer() const override { return *tokenizer_; }
    EngineStats Stats() const override;
    void StartDraining() override {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        inbox_->draining = true;
    }
    bool Idle() const override {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        return inbox_->num_live == 0;
    }

  private:
    void Loop();
    void Admit(std::unique_ptr<PendingRequest> pending);
    void CancelRequest(uint64_t request_id);
    void Step();
    void CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies);
    // A sample that draws a token this step, and its logits row.
    struct Draw {
        ActiveRequest* req;
        int index;
        int row;
    };
    // Every draw of the step in the order tokens are taken (forking the samples whose prompt just finished).
    std::vector<Draw> CollectDraws(const SchedulerOutput& out, std::vector<ActiveRequest*>* touched);
    // Selects the draws' tokens through Backend::SampleRows (kBackend: the default).
    void SampleOnBackend(const std::vector<Draw>& draws, Clock::time_point now);
    // Selects them one by one with each Sampler on the host copy of its row (kHost: the oracle the tests
    // compare the backends' selection with).
    void SampleOnHost(const std::vector<Draw>& draws, Clock::time_point now);
    void OnToken(ActiveRequest& req, int index, const SampleResult& result, Clock::time_point now);
    void FinishSample(ActiveRequest& req, int index, FinishReason reason);
    void FailRequest(ActiveRequest& req, const Status& error);
    // The sample has ended (its output said so): its sequence leaves the scheduler.
    void ReleaseSample(ActiveRequest& req, int index);
    void Deliver(ActiveRequest& req);
    void PublishStats();

    // Fixed after Init.
    EngineConfig config_;
    ModelInfo info_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<Model> model_;
    std::unique_ptr<Tokenizer> own_tokenizer_;
    const Tokenizer* tokenizer_ = nullptr;
    int max_model_len_ = 0;
    RequestLimits limits_;

    // Shared with callers.
    std::shared_ptr<Inbox> inbox_;
    mutable std::mutex observer_mu_;
    std::shared_ptr<EngineObserver> observer_;
    mutable std::mutex stats_mu_;
    EngineStats stats_;
    std::atomic<int64_t> last_loop_ns_{0};

    // Engine thread only. With tensor parallelism tp_ owns every rank's runner and cache, and runner_ / kv_ are
    // rank 0's (its logits, its cache's block size); otherwise own_kv_ / own_runner_.
    std::unique_ptr<TensorParallelGroup> tp_;
    std::unique_ptr<KvCache> own_kv_;
    std::unique_ptr<ModelRunner> own_runner_;
    KvCache* kv_ = nullptr;
    ModelRunner* runner_ = nullptr;
    std::unique_ptr<Scheduler> scheduler_;
    std::unordered_map<uint64_t, std::unique_ptr<ActiveRequest>> requests_;
    std::unordered_map<uint64_t, std::pair<ActiveRequest*, int>> by_seq_;  // seq id -> (request, sample)
    std::vector<float> logits_;
    std::vector<float> logits_copy_;
    bool device_sampling_ = false;
    std::vector<SampleRowParams> sample_rows_;
    std::vector<LogitEdit> sample_edits_;
    std::vector<SampleRowResult> sample_results_;
    std::mt19937_64 seed_rng_{std::random_device{}()};
    int64_t prompt_tokens_ = 0, generation_tokens_ = 0, steps_ = 0;

    std::thread thread_;
};

Status EngineImpl::Init(const EngineConfig& config) {
    config_ = config;
    auto bad = [](const std::string& field, const std::string& why) { return InvalidArgument(field + " " + why); };
    if (config.block_size <= 0 || config.block_size > 1024) return bad("block_size", "must be in [1, 1024]");
    if (config.max_num_seqs <= 0) return bad("max_num_seqs", "must be positive");
    if (config.max_num_batched_tokens <= 0) return bad("max_num_batched_tokens", "must be positive");
    if (config.max_queued_requests < 0) return bad("max_queued_requests", "must be >= 0");
    if (config.kv_cache_bytes < 0) return bad("kv_cache_bytes", "must be >= 0");
    if (config.kv_cache_bytes == 0 && !(config.kv_cache_memory_fraction > 0 && config.kv_cache_memory_fraction <= 1)) {
        return bad("kv_cache_memory_fraction", "must be in (0, 1]");
    }
    if (config.max_model_len < 0) return bad("max_model_len", "must be >= 0");
    if (config.tensor_parallel_size < 1 || config.tensor_parallel_size > 64) {
        return bad("tensor_parallel_size", "must be in [1, 64]");
    }
    if (config.tensor_parallel_size > 1 && config.backend != "cpu" && config.backend != "cuda") {
        return Unimplemented("tensor_parallel_size > 1 on the " + config.backend + " backend");
    }

    UA_ASSIGN_OR_RETURN(const DType device_dtype, ResolveDeviceDType(config));
    UA_ASSIGN_OR_RETURN(const Fp8Choice fp8, ResolveFp8(config));
    if (config.tensor_parallel_size > 1) {  // a model that cannot be split fails before its weights load
        UA_ASSIGN_OR_RETURN(const ModelConfig full, Model::LoadConfig(config.model_dir));
        UA_RETURN_IF_ERROR(ShardConfig(full, config.tensor_parallel_size).status());
    }
    // Small files before the weights: a broken generation_config.json fails fast.
    UA_ASSIGN_OR_RETURN(const GenerationConfig generation, LoadGenerationConfig(config));
    // Tensor parallel: the whole model loads on the cpu backend (host memory) and is cut into the ranks' shards.
    const int tp = config.tensor_parallel_size;
    UA_ASSIGN_OR_RETURN(backend_,
                        MakeBackend(tp > 1 ? "cpu" : config.backend, config.num_threads, device_dtype, config.cuda));
    const bool has_tokenizer =
        FileExists(config.model_dir + "/tokenizer.model") || FileExists(config.model_dir + "/tokenizer.json");
    LoadOptions load_options;
    load_options.quantize_fp8 = fp8.weights;
    UA_ASSIGN_OR_RETURN(model_, Model::Load(config.model_dir, backend_.get(), has_tokenizer, load_options));
    const ModelConfig& mc = model_->config;
    const WeightLoadStats& load = model_->weights.load;
    std::fprintf(stderr, "uniattn: weights %.2f GB from %.2f GB of checkpoint in %.2f s (%.2f GB/s, %d threads, %s)\n",
                 static_cast<double>(model_->weights.bytes) / 1e9, static_cast<double>(load.file_bytes) / 1e9,
                 load.seconds, load.seconds > 0 ? static_cast<double>(load.file_bytes) / load.seconds / 1e9 : 0.0,
                 load.num_threads, backend_->Description().c_str());
    const int num_fp8 = model_->weights.num_fp8_linear;
    if (num_fp8 > 0) {
        const int stored = model_->weights.num_fp8_stored;
        const std::string as = stored == num_fp8 ? std::string("e4m3 bytes with a scale per row")
                               : stored > 0      ? std::to_string(stored) + " as e4m3 bytes, the rest as " +
                                                  DTypeName(backend_->WeightDType()) + " values"
                                            : std::string(DTypeName(backend_->WeightDType())) + " values";
        std::fprintf(stderr, "uniattn: %d linear weights hold fp8 e4m3 values (%s), stored as %s\n", num_fp8,
                     mc.quantization.fp8() ? ("checkpoint quant_method " + mc.quantization.method).c_str()
                                           : "engine.quantization=fp8, a scale per output channel",
                     as.c_str());
        if (mc.quantization.static_activations) {
            // Weight-only fp8: the matmuls take 16-bit (CUDA) or fp32 (CPU) activations, so static activation
            // scales have nothing to scale. Said here so nobody expects fp8 x fp8 products.
            std::fprintf(stderr,
                         "uniattn: the checkpoint's static activation scales (input_scale) are read and not applied: "
                         "activations stay in the engine's precision (weight-only fp8)\n");
        }
    }
    if (model_->tokenizer) {
        tokenizer_ = model_->tokenizer.get();
    } else {
        own_tokenizer_ = MakeIdsOnlyTokenizer(mc);
        tokenizer_ = own_tokenizer_.get();
    }

    max_model_len_ = config.max_model_len > 0 ? config.max_model_len : mc.max_position_embeddings;
    if (max_model_len_ > mc.max_position_embeddings) {
        return bad("max_model_len", "(" + std::to_string(max_model_len_) +
                                        ") exceeds the model's max_position_embeddings (" +
                                        std::to_string(mc.max_position_embeddings) + ")");
    }

    // What KvCache::Create allocates (under tensor parallelism on cuda, the ranks' 16-bit planes, not the cpu
    // loader's).
    const DType kv_dtype = fp8.kv                               ? DType::kF8E4M3
                           : tp > 1 && config.backend == "cuda" ? device_dtype
                                                                : backend_->KvDType();
    KvScales kv_scales;
    if (fp8.kv) {
        UA_ASSIGN_OR_RETURN(kv_scales, FindKvScales(*model_, backend_.get()));
    }
    // Tensor parallel: the whole model (loaded above on the cpu backend) is cut into one shard per rank, each on
    // its own backend and thread (parallel/tensor_parallel.h); the pool below is per rank, for its KV heads.
    if (tp > 1) {
        std::vector<std::unique_ptr<Backend>> backends;
        std::unique_ptr<CommunicatorGroup> comms;
        if (config.backend == "cpu") {
            const int threads =
                config.num_threads > 0 ? config.num_threads : static_cast<int>(std::thread::hardware_concurrency());
            for (int r = 0; r < tp; ++r) backends.push_back(MakeCpuBackend(std::max(1, threads / tp)));
            comms = MakeHostCommunicators(tp);
        } else {
#ifdef UNIATTN_HAVE_CUDA
            // Rank r on device engine.cuda.device + r, NCCL between them on each rank's stream.
            std::vector<int> devices;
            std::vector<void*> streams;
            for (int r = 0; r < tp; ++r) {
                CudaOptions o = config.cuda;
                o.device = config.cuda.device + r;
                UA_ASSIGN_OR_RETURN(std::unique_ptr<Backend> be, MakeBackend("cuda", 0, device_dtype, o));
                devices.push_back(o.device);
                streams.push_back(be->NativeStream());
                backends.push_back(std::move(be));
            }
            UA_ASSIGN_OR_RETURN(comms, MakeNcclCommunicators(devices, streams));
#else
            return InvalidArgument("backend \"" + config.backend + "\" is not available in this build");
#endif
        }
        const std::string comm_name = comms->Name();
        UA_ASSIGN_OR_RETURN(tp_, TensorParallelGroup::Create(*model_, std::move(backends), std::move(comms)));
        model_->weights = ModelWeights{};  // every rank has its shard; the config and tokenizer stay
        runner_ = &tp_->runner(0);
        std::fprintf(stderr, "uniattn: tensor parallel over %d ranks (%s, %s communicator)\n", tp,
                     config.backend.c_str(), comm_name.c_str());
    } else {
        own_runner_ = std::make_unique<ModelRunner>(model_.get(), backend_.get());
        runner_ = own_runner_.get();
    }
    const ModelConfig& rank_config = tp_ ? tp_->model(0).config : mc;  // rank 0's heads: every rank's KV shape
    // The pool: KV bytes -> blocks for this layout (reuse layers keep no K plane: more blocks per byte).
    // Per rank. Tensor parallel: on cuda the smallest of the ranks' pools (each a fraction of its own card's free
    // memory); on cpu the ranks share the host's RAM, so a fraction of it is divided among them
    // (kv_cache_bytes, when set, is already per rank).
    int64_t bytes = 0;
    if (!tp_) {
        UA_ASSIGN_OR_RETURN(bytes, KvPoolBytes(config, backend_.get(), runner_, max_model_len_));
    } else {
        for (int r = 0; r < tp_->size(); ++r) {
            tp_->backend(r)->BindThread();
            UA_ASSIGN_OR_RETURN(const int64_t b, KvPoolBytes(config, tp_->backend(r), &tp_->runner(r), max_model_len_));
            bytes = r == 0 ? b : std::min(bytes, b);
        }
        tp_->backend(0)->BindThread();
        if (config.backend == "cpu" && config.kv_cache_bytes == 0) bytes /= tp_->size();
    }
    const int64_t per_block = rank_config.KvBytesPerToken(DTypeBytes(kv_dtype)) * config.block_size;
    int64_t num_blocks = BlockManager::NumBlocksForBytes(rank_config, kv_dtype, config.block_size, bytes);
    num_blocks = std::min<int64_t>(num_blocks, INT32_MAX);
    if (num_blocks < 1) {
        return bad("kv_cache_bytes", "(" + std::to_string(bytes) + ") is smaller than one KV block (" +
                                         std::to_string(per_block) + " bytes)");
    }
    if (tp_) {
        UA_RETURN_IF_ERROR(tp_->CreateKv(config.block_size, num_blocks, kv_dtype, fp8.kv ? &kv_scales : nullptr));
        kv_ = &tp_->kv(0);
    } else {
        UA_ASSIGN_OR_RETURN(own_kv_, KvCache::Create(backend_.get(), mc, config.block_size, num_blocks, kv_dtype,
                                                     fp8.kv ? &kv_scales : nullptr));
        kv_ = own_kv_.get();
    }
    UA_CHECK_EQ(kv_->bytes_per_block(), per_block);
    limits_.vocab_size = mc.vocab_size;
    limits_.max_model_len = max_model_len_;
    limits_.max_n = std::min(RequestLimits::kMaxSamples, config.max_num_seqs);
    limits_.max_sequences_per_request = config.max_num_seqs;
    limits_.kv_pool_tokens = num_blocks * config.block_size;
    limits_.has_text = own_tokenizer_ == nullptr;
    limits_.max_prompt_bytes = static_cast<int64_t>(tokenizer_->max_token_bytes()) * max_model_len_;
    device_sampling_ = config.sampling_place == EngineConfig::SamplingPlace::kBackend;
    SchedulerConfig sc;
    sc.max_num_seqs = config.max_num_seqs;
    sc.max_num_batched_tokens = config.max_num_batched_tokens;
    scheduler_ = std::make_unique<Scheduler>(sc, num_blocks, config.block_size, config.enable_prefix_caching);

    info_.dir = config.model_dir;
    info_.name = config.model_name;
    if (info_.name.empty()) {
        std::string d = config.model_dir;
        while (d.size() > 1 && d.back() == '/') d.pop_back();
        const size_t slash = d.rfind('/');
        info_.name = slash == std::string::npos ? d : d.substr(slash + 1);
    }
    info_.config = mc;
    info_.max_model_len = max_model_len_;
    info_.block_size = config.block_size;
    info_.kv_bytes_per_token = mc.KvBytesPerToken(DTypeBytes(kv_dtype));
    info_.kv_bytes_per_token_dense = mc.DenseKvBytesPerToken(DTypeBytes(kv_dtype));
    Backend* serving = tp_ ? tp_->backend(0) : backend_.get();
    info_.backend = serving->Name();
    info_.dtype = std::string(DTypeName(serving->WeightDType())) + (num_fp8 > 0 ? " (fp8 e4m3 values)" : "") + " / " +
                  DTypeName(kv_dtype);
    info_.sampling_defaults = generation.sampling;
    info_.eos_token_ids = EosTokenIds(*tokenizer_, mc, generation);

    stats_.num_blocks_total = num_blocks;
    stats_.kv_bytes_total = kv_->total_bytes() * std::max(1, tp);
    last_loop_ns_ = Clock::now().time_since_epoch().count();
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
}

EngineImpl::~EngineImpl() {
    {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        inbox_->stopping = true;
        inbox_->cv.notify_all();
    }
    if (thread_.joinable()) thread_.join();
}

StatusOr<std::shared_ptr<RequestHandle>> EngineImpl::Submit(GenerationRequest request) {
    auto pending = std::make_unique<PendingRequest>();
    UA_ASSIGN_OR_RETURN(pending->max_new_tokens, ValidateRequest(request, limits_));
    std::lock_guard<std::mutex> lock(inbox_->mu);
    if (inbox_->stopping) return Unavailable("the engine is shutting down");
    if (inbox_->draining) return Unavailable("the engine is draining and accepts no new requests");
    if (inbox_->num_queued >= config_.max_queued_requests) {
        return ResourceExhausted(
            "the request queue is full (" + std::to_string(inbox_->num_queued) +
            " requests waiting; max_queued_requests = " + std::to_string(config_.max_queued_requests) + ")");
    }
    pending->id = inbox_->next_id++;
    pending->request = std::move(request);
    pending->submit_time = Clock::now();
    pending->handle = std::make_shared<RequestHandleImpl>(pending->id, inbox_);
    std::shared_ptr<RequestHandle> handle = pending->handle;
    ++inbox_->num_queued;
    ++inbox_->num_live;
    inbox_->submitted.push_back(std::move(pending));
    inbox_->cv.notify_all();
    return handle;
}

EngineStats EngineImpl::Stats() const {
    EngineStats s;
    {
        std::lock_guard<std::mutex> lock(stats_mu_);
        s = stats_;
    }
    s.seconds_since_last_step = Seconds(Clock::now().time_since_epoch() - Clock::duration(last_loop_ns_.load()));
    std::lock_guard<std::mutex> lock(inbox_->mu);
    s.draining = inbox_->draining;
    return s;
}

void EngineImpl::Loop() {
    for (;;) {
        std::vector<std::unique_ptr<PendingRequest>> submitted;
        std::vector<uint64_t> cancelled;
        bool stopping = false;
        {
            std::unique_lock<std::mutex> lock(inbox_->mu);
            if (!scheduler_->HasWork() && inbox_->submitted.empty() && inbox_->cancelled.empty() && !inbox_->stopping) {
                // Idle: wake up now and then so that seconds_since_last_step proves the loop is alive.
                inbox_->cv.wait_for(lock, std::chrono::milliseconds(100));
            }
            submitted.swap(inbox_->submitted);
            cancelled.swap(inbox_->cancelled);
            stopping = inbox_->stopping;
        }
        last_loop_ns_ = Clock::now().time_since_epoch().count();
        for (auto& p : submitted) Admit(std::move(p));
        for (uint64_t id : cancelled) CancelRequest(id);
        if (stopping) break;
        if (scheduler_->HasWork()) Step();
        PublishStats();
    }
    // Shutdown: whatever is left ends with kAbort.
    std::vector<uint64_t> ids;
    for (const auto& [id, req] : requests_) ids.push_back(id);
    for (uint64_t id : ids) CancelRequest(id);
    PublishStats();
}

void EngineImpl::Admit(std::unique_ptr<PendingRequest> pending) {
    auto req = std::make_unique<ActiveRequest>();
    req->id = pending->id;
    req->request = std::move(pending->request);
    req->handle = std::move(pending->handle);
    req->max_new_tokens = pending->max_new_tokens;
    req->clock = std::make_unique<RequestClock>(pending->submit_time);
    const GenerationRequest& r = req->request;
    const int prompt = static_cast<int>(r.prompt_ids.size());
    auto seq_id =
        scheduler_->AddSequence(req->id, r.prompt_ids, r.n, prompt + req->max_new_tokens - 1, r.num_earlier_sequences);
    req->samples.resize(r.n);
    ActiveRequest* raw = req.get();
    requests_.emplace(req->id, std::move(req));
    if (!seq_id.ok()) {  // Validate checked the same bounds; kept as a guard
        FailRequest(*raw, seq_id.status());
        Deliver(*raw);
        return;
    }
    SamplingParams p = SamplingParams::From(r);
    p.want_logprob = r.logprobs >= 0;
    const bool wants_text = (r.detokenize && !own_tokenizer_) || !r.stop.empty();
    for (int i = 0; i < r.n; ++i) {
        SampleState& s = raw->samples[i];
        if (r.seed) p.seed = *r.seed + static_cast<uint64_t>(i);
        s.sampler = std::make_unique<Sampler>(p, seed_rng_());
        s.output =
            std::make_unique<SampleOutput>(r, tokenizer_, &info_.eos_token_ids, wants_text, i, raw->max_new_tokens);
    }
    if (!seq_id.ok()) {  // ValidateRequest checked the same bounds; kept as a guard
        FailRequest(*raw, seq_id.status());
        Deliver(*raw);
        return;
    }
    raw->samples[0].seq_id = *seq_id;
    by_seq_[*seq_id] = {raw, 0};
}

void EngineImpl::CancelRequest(uint64_t request_id) {
    auto it = requests_.find(request_id);
    if (it == requests_.end()) return;  // already ended
    ActiveRequest& req = *it->second;
    for (int i = 0; i < static_cast<int>(req.samples.size()); ++i) {
        if (!req.samples[i].output->done()) FinishSample(req, i, FinishReason::kAbort);
    }
    Deliver(req);
}

void EngineImpl::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
    if (tp_) {
        tp_->CopyBlocks(copies);
        return;
    }
    kv_->CopyBlocks(backend_.get(), copies);
}

void EngineImpl::Step() {
    const Clock::time_point t0 = Clock::now();
    SchedulerOutput out = scheduler_->Schedule();
    if (out.empty()) return;
    ++steps_;

    const int bs = config_.block_size;
    ForwardInput in;
    int num_newly_scheduled = 0;
    for (const ScheduledChunk& c : out.chunks) {
        ActiveRequest& req = *by_seq_.at(c.seq->seq_id).first;
        if (!req.clock->scheduled()) {
            req.clock->Scheduled(t0);
            req.cached_tokens = std::max(0, c.seq->num_cached_tokens);
            prompt_tokens_ += static_cast<int64_t>(req.request.prompt_ids.size());
            ++num_newly_scheduled;
        }
        const std::vector<int32_t> chunk(c.seq->tokens.begin() + c.start,
                                         c.seq->tokens.begin() + c.start + c.num_tokens);
        in.AddSequence(chunk, c.start, c.seq->block_table, bs, c.wants_logits);
    }
    in.Finish();
    if (num_newly_scheduled > 0) {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        inbox_->num_queued -= num_newly_scheduled;
    }
    CopyBlocks(out.block_copies);
    if (!device_sampling_) logits_.resize(in.logits_rows.size() * static_cast<size_t>(model_->config.vocab_size));
    const Clock::time_point t1 = Clock::now();
    float* host_logits = device_sampling_ ? nullptr : logits_.data();
    const Status status = tp_ ? tp_->Forward(in, host_logits) : runner_->Forward(in, *kv_, host_logits);
    const Clock::time_point t2 = Clock::now();

    std::vector<ActiveRequest*> touched;
    if (!status.ok()) {
        // Finish the affected requests and free their blocks; the engine keeps serving the others.
        const Status error = Internal("the forward pass failed: " + status.message());
        for (const ScheduledChunk& c : out.chunks) {
            auto it = by_seq_.find(c.seq->seq_id);
            if (it != by_seq_.end()) touched.push_back(it->second.first);
        }
        std::sort(touched.begin(), touched.end());
        touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
        for (ActiveRequest* req : touched) FailRequest(*req, error);
    } else {
        scheduler_->CompleteStep(out);
        const std::vector<Draw> draws = CollectDraws(out, &touched);
        if (device_sampling_) {
            SampleOnBackend(draws, t2);
        } else {
            SampleOnHost(draws, t2);
        }
    }
    const Clock::time_point t3 = Clock::now();
    // The step is reported before its events are delivered, so a client that has read a request's last
    // event finds the observer up to date.
    std::shared_ptr<EngineObserver> observer;
    {
        std::lock_guard<std::mutex> lock(observer_mu_);
        observer = observer_;
    }
    if (observer) {
        observer->OnStep(out.num_prefill_tokens, out.num_decode_tokens, Seconds(t1 - t0), Seconds(t2 - t1),
                         Seconds(t3 - t2));
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (ActiveRequest* req : touched) Deliver(*req);
}

std::vector<EngineImpl::Draw> EngineImpl::CollectDraws(const SchedulerOutput& out,
                                                       std::vector<ActiveRequest*>* touched) {
    std::vector<Draw> draws;
    int row = 0;
    for (const ScheduledChunk& c : out.chunks) {
        if (!c.wants_logits) continue;
        const uint64_t seq_id = c.seq->seq_id;
        auto [req, index] = by_seq_.at(seq_id);
        touched->push_back(req);
        draws.push_back({req, index, row});
        if (c.seq->num_pending_forks > 0) {
            // The prompt is computed: the other samples fork off and share its blocks; each draws its first
            // token from the same logits with its own sampler.
            const std::vector<uint64_t> kids = scheduler_->Fork(seq_id, c.seq->num_pending_forks);
            int next = 0;
            for (uint64_t kid : kids) {
                while (req->samples[next].seq_id != 0 || req->samples[next].output->done()) ++next;
                req->samples[next].seq_id = kid;
                scheduler_->Find(kid)->sample_index = next;
                by_seq_[kid] = {req, next};
                draws.push_back({req, next, row});
            }
        }
        ++row;
    }
    return draws;
}

void EngineImpl::SampleOnBackend(const std::vector<Draw>& draws, Clock::time_point now) {
    const int vocab = model_->config.vocab_size;
    sample_rows_.resize(draws.size());
    sample_edits_.clear();
    for (size_t k = 0; k < draws.size(); ++k) {
        SampleState& sample = draws[k].req->samples[draws[k].index];
        sample.sampler->Prepare(vocab, draws[k].req->request.prompt_ids, sample.output->generated(), &sample_rows_[k],
                                &sample_edits_);
        sample_rows_[k].logits_row = draws[k].row;
    }
    sample_results_.resize(draws.size());
    runner_->SampleLogits(sample_rows_.data(), static_cast<int>(draws.size()), sample_edits_.data(),
                          static_cast<int>(sample_edits_.size()), sample_results_.data());
    for (size_t k = 0; k < draws.size(); ++k) {
        OnToken(*draws[k].req, draws[k].index, Sampler::ToResult(sample_results_[k]), now);
    }
}

void EngineImpl::SampleOnHost(const std::vector<Draw>& draws, Clock::time_point now) {
    const int vocab = model_->config.vocab_size;
    // Host sampling edits a row in place; samples after the first of a row draw from a fresh copy.
    int copied_row = -1;
    for (size_t k = 0; k < draws.size(); ++k) {
        float* logits = logits_.data() + static_cast<size_t>(draws[k].row) * vocab;
        const bool shared = k + 1 < draws.size() && draws[k + 1].row == draws[k].row;
        if (shared && copied_row != draws[k].row) {
            logits_copy_.assign(logits, logits + vocab);
            copied_row = draws[k].row;
        } else if (copied_row == draws[k].row) {
            std::copy(logits_copy_.begin(), logits_copy_.end(), logits);
        }
        SampleState& sample = draws[k].req->samples[draws[k].index];
        const SampleResult result =
            sample.sampler->Sample(logits, vocab, draws[k].req->request.prompt_ids, sample.output->generated());
        OnToken(*draws[k].req, draws[k].index, result, now);
    }
}

void EngineImpl::OnToken(ActiveRequest& req, int index, const SampleResult& result, Clock::time_point now) {
    ++generation_tokens_;
    req.clock->Token(now);
    SampleState& s = req.samples[index];
    if (s.output->OnToken(result, req.cached_tokens, &req.outbox)) {
        scheduler_->AppendToken(s.seq_id, result.token);
    } else {
        ReleaseSample(req, index);
    }
}

void EngineImpl::FinishSample(ActiveRequest& req, int index, FinishReason reason) {
    req.samples[index].output->Finish(reason, req.cached_tokens, &req.outbox);
    ReleaseSample(req, index);
}

void EngineImpl::FailRequest(ActiveRequest& req, const Status& error) {
    req.errored = true;
    for (int i = 0; i < static_cast<int>(req.samples.size()); ++i) {
        if (req.samples[i].output->done()) continue;
        req.samples[i].output->Fail(error, req.cached_tokens, &req.outbox);
        ReleaseSample(req, i);
    }
}

void EngineImpl::ReleaseSample(ActiveRequest& req, int index) {
    SampleState& s = req.samples[index];
    if (s.seq_id != 0) {
        scheduler_->Finish(s.seq_id);
        by_seq_.erase(s.seq_id);
        s.seq_id = 0;
    }
    ++req.num_done;
}

void EngineImpl::Deliver(ActiveRequest& req) {
    const bool end = req.num_done == static_cast<int>(req.samples.size());
    if (req.outbox.empty() && !end) return;
    if (!end) {
        req.handle->Deliver(req.outbox, false);
        return;
    }
    RequestTimings t;
    req.clock->Finish(Clock::now(), &t);
    t.prompt_tokens = static_cast<int>(req.request.prompt_ids.size());
    for (const SampleState& s : req.samples) t.generation_tokens += static_cast<int>(s.output->generated().size());
    t.errored = req.errored;
    t.finish_reason = req.samples[0].output->finish_reason();
    if (!req.clock->scheduled()) {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        --inbox_->num_queued;
    }
    std::shared_ptr<RequestHandleImpl> handle = req.handle;
    std::vector<RequestEvent> events = std::move(req.outbox);
    const uint64_t id = req.id;
    requests_.erase(id);  // `req` is gone from here on
    std::shared_ptr<EngineObserver> observer;
    {
        std::lock_guard<std::mutex> lock(observer_mu_);
        observer = observer_;
    }
    if (observer) observer->OnRequestFinished(t);
    // The stream closes only after the request has left every engine count, so Idle() is true once the
    // last event of the last request can be read.
    {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        --inbox_->num_live;
    }
    handle->Deliver(events, true);
}

void EngineImpl::PublishStats() {
    const BlockManager& bm = scheduler_->block_manager();
    int pending = 0;
    {
        std::lock_guard<std::mutex> lock(inbox_->mu);
        pending = static_cast<int>(inbox_->submitted.size());
    }
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.num_running = scheduler_->num_running();
    stats_.num_waiting = scheduler_->num_waiting() + pending;
    stats_.num_blocks_used = bm.num_used();
    stats_.num_blocks_cached = bm.num_cached();
    stats_.kv_bytes_used = bm.num_used() * kv_->bytes_per_block() * (tp_ ? tp_->size() : 1);
    stats_.num_preemptions = scheduler_->num_preemptions();
    stats_.prefix_cache_queries = bm.prefix_query_tokens();
    stats_.prefix_cache_hits = bm.prefix_hit_tokens();
    stats_.prompt_tokens = prompt_tokens_;
    stats_.generation_tokens = generation_tokens_;
    stats_.steps = steps_;
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config) {
    auto engine = std::make_unique<EngineImpl>();
    UA_RETURN_IF_ERROR(engine->Init(config));
    return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace uniattn
