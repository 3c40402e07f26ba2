// Engine::Create and the engine thread. The contract (threads, ownership, invariants, data path, request
// state machine) is engine/README.md; keep the two in step.
#include "uniattn/engine.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "kv/block_manager.h"
#include "kv/kv_cache.h"
#include "model/forward.h"
#include "model/model.h"
#include "sampling/sampler.h"
#include "scheduler/scheduler.h"
#include "uniattn/safetensors.h"
#include "util/file.h"

namespace uniattn {

namespace {

using Clock = std::chrono::steady_clock;

// The sampler's share of a request (seed and logprob flags are set where each sample is made).
SamplingParams SamplingParamsOf(const GenerationRequest& r) {
    SamplingParams p;
    p.temperature = r.temperature;
    p.top_p = r.top_p;
    p.top_k = r.top_k;
    p.min_p = r.min_p;
    p.repetition_penalty = r.repetition_penalty;
    p.presence_penalty = r.presence_penalty;
    p.frequency_penalty = r.frequency_penalty;
    p.logit_bias = r.logit_bias;
    p.num_logprobs = std::max(0, r.logprobs);
    return p;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Stands in for a model directory without tokenizer.model (test and benchmark models): token ids only,
// no text. Submit refuses stop strings for such a model.
class NoTextTokenizer final : public Tokenizer {
  public:
    NoTextTokenizer(const ModelConfig& config) : vocab_size_(config.vocab_size) {
        bos_id_ = config.bos_token_id;
        eos_id_ = config.eos_token_id;
    }
    std::vector<int32_t> Encode(std::string_view, bool) const override { return {}; }
    std::string Decode(const std::vector<int32_t>&) const override { return {}; }
    std::string IdToPiece(int32_t) const override { return {}; }
    int vocab_size() const override { return vocab_size_; }

  private:
    int vocab_size_;
};

struct PendingRequest;

// What callers' threads share with the engine thread. Handles keep it alive, so Cancel() on a handle that
// outlives its engine is harmless.
struct Inbox {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::unique_ptr<PendingRequest>> submitted;  // accepted by Submit, not yet seen by the engine
    std::vector<uint64_t> cancelled;                         // request ids
    bool stopping = false;
    bool draining = false;
    int num_queued = 0;  // accepted and never scheduled: bounded by max_queued_requests
    int num_live = 0;    // accepted and not yet ended
    uint64_t next_id = 1;
};

class RequestHandleImpl final : public RequestHandle {
  public:
    RequestHandleImpl(uint64_t id, std::shared_ptr<Inbox> inbox) : id_(id), inbox_(std::move(inbox)) {}

    uint64_t id() const override { return id_; }

    bool Next(RequestEvent* event, std::chrono::milliseconds timeout) override {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, timeout, [&] { return !events_.empty() || ended_; });
        return PopLocked(event);
    }

    bool TryNext(RequestEvent* event) override {
        std::lock_guard<std::mutex> lock(mu_);
        return PopLocked(event);
    }

    bool closed() const override {
        std::lock_guard<std::mutex> lock(mu_);
        return ended_ && events_.empty();
    }

    void Cancel() override {
        if (cancel_requested_.exchange(true)) return;
        std::lock_guard<std::mutex> lock(inbox_->mu);
        inbox_->cancelled.push_back(id_);
        inbox_->cv.notify_all();
    }

    void SetNotify(std::function<void()> notify) override {
        std::lock_guard<std::mutex> lock(mu_);
        notify_ = std::move(notify);
    }

    // Engine thread: appends a step's events; `end` closes the stream after them.
    void Deliver(std::vector<RequestEvent>& events, bool end) {
        std::function<void()> notify;
        {
            std::lock_guard<std::mutex> lock(mu_);
            for (RequestEvent& e : events) events_.push_back(std::move(e));
            ended_ = ended_ || end;
            notify = notify_;
        }
        events.clear();
        cv_.notify_all();
        if (notify) notify();
    }

  private:
    bool PopLocked(RequestEvent* event) {
        if (events_.empty()) return false;
        *event = std::move(events_.front());
        events_.pop_front();
        return true;
    }

    const uint64_t id_;
    const std::shared_ptr<Inbox> inbox_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<RequestEvent> events_;
    bool ended_ = false;
    std::function<void()> notify_;
    std::atomic<bool> cancel_requested_{false};
};

struct PendingRequest {
    uint64_t id = 0;
    GenerationRequest request;
    std::shared_ptr<RequestHandleImpl> handle;
    int max_new_tokens = 0;  // max_tokens capped by the context length
    Clock::time_point submit_time;
};

// One of a request's n samples (engine thread only).
struct Sample {
    uint64_t seq_id = 0;  // 0 until forked from sample 0
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<IncrementalDetokenizer> detok;  // when text is wanted or stop strings are set
    std::vector<int32_t> generated;
    std::string held;  // detokenized text not yet emitted: it could still begin a stop string
    bool done = false;
    FinishReason finish_reason = FinishReason::kStop;
};

// A request the engine thread is working on.
struct ActiveRequest {
    uint64_t id = 0;
    GenerationRequest request;
    std::shared_ptr<RequestHandleImpl> handle;
    int max_new_tokens = 0;
    std::vector<Sample> samples;
    int num_done = 0;
    int cached_tokens = 0;
    bool scheduled = false;
    bool errored = false;
    Clock::time_point submit_time, first_scheduled, first_token, last_token;
    bool has_first_token = false;
    std::vector<double> inter_token_s;
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
    void OnToken(ActiveRequest& req, int index, const SampleResult& result, Clock::time_point now);
    void FinishSample(ActiveRequest& req, int index, FinishReason reason);
    void FailRequest(ActiveRequest& req, const Status& error);
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

    // Engine thread only.
    std::unique_ptr<KvCache> kv_;
    std::unique_ptr<ModelRunner> runner_;
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

    DType device_dtype = DType::kF16;
    if (config.dtype == "float32") {
        device_dtype = DType::kF32;
    } else if (config.dtype == "bfloat16") {
        device_dtype = DType::kBF16;
    } else if (config.dtype == "auto") {
        if (config.backend != "cpu") {
            UA_ASSIGN_OR_RETURN(ModelConfig mc, Model::LoadConfig(config.model_dir));
            if (mc.torch_dtype == "bfloat16") device_dtype = DType::kBF16;
        }
    } else if (config.dtype != "float16") {
        return bad("dtype", "\"" + config.dtype + "\" is not one of auto, float16, bfloat16, float32");
    }
    if (config.backend == "cpu" && config.dtype != "auto" && config.dtype != "float32") {
        return bad("dtype", "\"" + config.dtype + "\": the cpu backend computes in float32 (use auto or float32)");
    }
    UA_ASSIGN_OR_RETURN(backend_, MakeBackend(config.backend, config.num_threads, device_dtype));
    const bool has_tokenizer = FileExists(config.model_dir + "/tokenizer.model");
    UA_ASSIGN_OR_RETURN(model_, Model::Load(config.model_dir, backend_.get(), has_tokenizer));
    const ModelConfig& mc = model_->config;
    if (model_->tokenizer) {
        tokenizer_ = model_->tokenizer.get();
    } else {
        own_tokenizer_ = std::make_unique<NoTextTokenizer>(mc);
        tokenizer_ = own_tokenizer_.get();
    }

    max_model_len_ = config.max_model_len > 0 ? config.max_model_len : mc.max_position_embeddings;
    if (max_model_len_ > mc.max_position_embeddings) {
        return bad("max_model_len", "(" + std::to_string(max_model_len_) +
                                        ") exceeds the model's max_position_embeddings (" +
                                        std::to_string(mc.max_position_embeddings) + ")");
    }

    // The pool: KV bytes -> blocks for this layout (reuse layers keep no K plane: more blocks per byte).
    runner_ = std::make_unique<ModelRunner>(model_.get(), backend_.get());
    int64_t bytes = config.kv_cache_bytes;
    if (bytes == 0) {
        if (config.backend == "cpu") {
            const int64_t ram = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
            bytes = static_cast<int64_t>(static_cast<double>(ram) * config.kv_cache_memory_fraction);
        } else {
            // The weights are loaded; the step workspaces for the largest step are taken now, so the pool is
            // a fraction of what is left after them. Backend workspaces (attention partials, GEMM splits,
            // sampling scratch) and recorded graphs grow later, inside the remaining (1 - fraction).
            UA_RETURN_IF_ERROR(runner_->ReserveWorkspace(config.max_num_batched_tokens,
                                                         std::min(config.max_num_seqs, config.max_num_batched_tokens),
                                                         max_model_len_));
            const size_t free_bytes = backend_->FreeDeviceBytes();
            if (free_bytes == 0) {
                return Unimplemented("backend " + backend_->Name() +
                                     " cannot report free device memory; set kv_cache_bytes");
            }
            bytes = static_cast<int64_t>(static_cast<double>(free_bytes) * config.kv_cache_memory_fraction);
            std::fprintf(stderr, "uniattn: KV pool %.1f MiB = %.3f x %.1f MiB free device memory (%s)\n",
                         static_cast<double>(bytes) / (1 << 20), config.kv_cache_memory_fraction,
                         static_cast<double>(free_bytes) / (1 << 20), backend_->Description().c_str());
        }
    }
    const DType kv_dtype = backend_->KvDType();  // what KvCache::Create allocates
    const int64_t per_block = mc.KvBytesPerToken(DTypeBytes(kv_dtype)) * config.block_size;
    int64_t num_blocks = BlockManager::NumBlocksForBytes(mc, kv_dtype, config.block_size, bytes);
    num_blocks = std::min<int64_t>(num_blocks, INT32_MAX);
    if (num_blocks < 1) {
        return bad("kv_cache_bytes", "(" + std::to_string(bytes) + ") is smaller than one KV block (" +
                                         std::to_string(per_block) + " bytes)");
    }
    UA_ASSIGN_OR_RETURN(kv_, KvCache::Create(backend_.get(), mc, config.block_size, num_blocks));
    UA_CHECK_EQ(kv_->bytes_per_block(), per_block);
    limits_.vocab_size = mc.vocab_size;
    limits_.max_model_len = max_model_len_;
    limits_.max_n = std::min(RequestLimits::kMaxSamples, config.max_num_seqs);
    limits_.max_sequences_per_request = config.max_num_seqs;
    limits_.kv_pool_tokens = num_blocks * config.block_size;
    limits_.has_text = own_tokenizer_ == nullptr;
    limits_.max_prompt_bytes = static_cast<int64_t>(tokenizer_->max_token_bytes()) * max_model_len_;
    // kAuto is kBackend on every backend: a device backend keeps its logits on the device, and the CPU
    // backend's SampleRows spreads a step's rows over its threads (kHost draws them one by one here).
    device_sampling_ = config.sampling_place != EngineConfig::SamplingPlace::kHost;
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
    info_.backend = backend_->Name();
    info_.dtype = std::string(DTypeName(backend_->WeightDType())) + " / " + DTypeName(kv_dtype);

    stats_.num_blocks_total = num_blocks;
    stats_.kv_bytes_total = kv_->total_bytes();
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
    req->submit_time = pending->submit_time;
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
    SamplingParams p = SamplingParamsOf(r);
    p.want_logprob = r.logprobs >= 0;
    const bool wants_text = (r.detokenize && !own_tokenizer_) || !r.stop.empty();
    for (int i = 0; i < r.n; ++i) {
        Sample& s = raw->samples[i];
        if (r.seed) p.seed = *r.seed + static_cast<uint64_t>(i);
        s.sampler = std::make_unique<Sampler>(p, seed_rng_());
        if (wants_text) s.detok = std::make_unique<IncrementalDetokenizer>(tokenizer_, r.prompt_ids);
    }
    raw->samples[0].seq_id = *seq_id;
    by_seq_[*seq_id] = {raw, 0};
}

void EngineImpl::CancelRequest(uint64_t request_id) {
    auto it = requests_.find(request_id);
    if (it == requests_.end()) return;  // already ended
    ActiveRequest& req = *it->second;
    for (int i = 0; i < static_cast<int>(req.samples.size()); ++i) {
        if (!req.samples[i].done) FinishSample(req, i, FinishReason::kAbort);
    }
    Deliver(req);
}

void EngineImpl::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
    // Each plane is [num_blocks, block_size, num_kv_heads, head_dim]: a block is one contiguous run.
    for (const auto& [src, dst] : copies) {
        for (int l = 0; l < model_->config.num_layers; ++l) {
            for (int k = 0; k < 2; ++k) {
                if (k == 0 && !kv_->HasK(l)) continue;
                const KvPlane& plane = k == 0 ? kv_->K(l) : kv_->V(l);
                const size_t bytes = static_cast<size_t>(plane.block_size) * plane.num_kv_heads * plane.head_dim *
                                     DTypeBytes(plane.dtype);
                char* base = static_cast<char*>(plane.base);
                backend_->CopyOnDevice(base + static_cast<int64_t>(dst) * bytes,
                                       base + static_cast<int64_t>(src) * bytes, bytes);
            }
        }
    }
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
        if (!req.scheduled) {
            req.scheduled = true;
            req.first_scheduled = t0;
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
    const int vocab = model_->config.vocab_size;
    if (!device_sampling_) logits_.resize(in.logits_rows.size() * static_cast<size_t>(vocab));
    const Clock::time_point t1 = Clock::now();
    const Status status = runner_->Forward(in, *kv_, device_sampling_ ? nullptr : logits_.data());
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
        // Every sample that draws a token this step, with its logits row, in the order tokens are taken.
        struct Draw {
            ActiveRequest* req;
            int index;
            int row;
        };
        std::vector<Draw> draws;
        int row = 0;
        for (const ScheduledChunk& c : out.chunks) {
            if (!c.wants_logits) continue;
            const uint64_t seq_id = c.seq->seq_id;
            auto [req, index] = by_seq_.at(seq_id);
            touched.push_back(req);
            draws.push_back({req, index, row});
            if (c.seq->num_pending_forks > 0) {
                // The prompt is computed: the other samples fork off and share its blocks; each draws its
                // first token from the same logits with its own sampler.
                const std::vector<uint64_t> kids = scheduler_->Fork(seq_id, c.seq->num_pending_forks);
                int next = 0;
                for (uint64_t kid : kids) {
                    while (req->samples[next].seq_id != 0 || req->samples[next].done) ++next;
                    req->samples[next].seq_id = kid;
                    scheduler_->Find(kid)->sample_index = next;
                    by_seq_[kid] = {req, next};
                    draws.push_back({req, next, row});
                }
            }
            ++row;
        }
        if (device_sampling_) {
            sample_rows_.resize(draws.size());
            sample_edits_.clear();
            for (size_t k = 0; k < draws.size(); ++k) {
                Sample& sample = draws[k].req->samples[draws[k].index];
                sample.sampler->Prepare(vocab, draws[k].req->request.prompt_ids, sample.generated, &sample_rows_[k],
                                        &sample_edits_);
                sample_rows_[k].logits_row = draws[k].row;
            }
            sample_results_.resize(draws.size());
            runner_->SampleLogits(sample_rows_.data(), static_cast<int>(draws.size()), sample_edits_.data(),
                                  static_cast<int>(sample_edits_.size()), sample_results_.data());
            for (size_t k = 0; k < draws.size(); ++k) {
                OnToken(*draws[k].req, draws[k].index, Sampler::ToResult(sample_results_[k]), t2);
            }
        } else {
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
                Sample& sample = draws[k].req->samples[draws[k].index];
                const SampleResult result =
                    sample.sampler->Sample(logits, vocab, draws[k].req->request.prompt_ids, sample.generated);
                OnToken(*draws[k].req, draws[k].index, result, t2);
            }
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

namespace {

// Length of the longest suffix of `text` that is a proper prefix of one of `stops`.
size_t StopPrefixSuffix(const std::string& text, const std::vector<std::string>& stops) {
    size_t best = 0;
    for (const std::string& s : stops) {
        for (size_t n = std::min(text.size(), s.size() - 1); n > best; --n) {
            if (text.compare(text.size() - n, n, s, 0, n) == 0) {
                best = n;
                break;
            }
        }
    }
    return best;
}

// Position of the earliest complete stop string in `text`, or npos.
size_t FindStop(const std::string& text, const std::vector<std::string>& stops) {
    size_t best = std::string::npos;
    for (const std::string& s : stops) best = std::min(best, text.find(s));
    return best;
}

}  // namespace

void EngineImpl::OnToken(ActiveRequest& req, int index, const SampleResult& result, Clock::time_point now) {
    const GenerationRequest& r = req.request;
    Sample& s = req.samples[index];
    s.generated.push_back(result.token);
    ++generation_tokens_;
    // One inter-token interval per step that gives the request tokens (every sample of a step shares its
    // `now`), whichever of its samples are still running: with n > 1 the request keeps being measured after
    // sample 0 stops.
    if (!req.has_first_token) {
        req.has_first_token = true;
        req.first_token = now;
    } else if (now != req.last_token) {
        req.inter_token_s.push_back(Seconds(now - req.last_token));
    }
    req.last_token = now;

    const bool eos = !r.ignore_eos && result.token == tokenizer_->eos_id();
    if (eos || std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), result.token) != r.stop_token_ids.end()) {
        FinishSample(req, index, FinishReason::kStop);  // the stop token itself is not emitted
        return;
    }
    RequestEvent ev;
    ev.kind = RequestEvent::Kind::kToken;
    ev.index = index;
    ev.token = result.token;
    if (r.logprobs >= 0) {
        ev.logprob = result.logprob;
        for (const auto& [token, logprob] : result.top) ev.top_logprobs.push_back({token, logprob});
    }
    bool stopped = false;
    if (s.detok) {
        s.held += s.detok->Push(result.token);
        size_t emit = s.held.size();
        if (!r.stop.empty()) {
            const size_t at = FindStop(s.held, r.stop);
            if (at != std::string::npos) {
                emit = at;
                stopped = true;
            } else {
                emit -= StopPrefixSuffix(s.held, r.stop);
            }
        }
        if (r.detokenize) ev.text = s.held.substr(0, emit);
        s.held.erase(0, stopped ? s.held.size() : emit);
    }
    req.outbox.push_back(std::move(ev));
    if (stopped) {
        FinishSample(req, index, FinishReason::kStop);
    } else if (static_cast<int>(s.generated.size()) >= req.max_new_tokens) {
        FinishSample(req, index, FinishReason::kLength);
    } else {
        scheduler_->AppendToken(s.seq_id, result.token);
    }
}

void EngineImpl::FinishSample(ActiveRequest& req, int index, FinishReason reason) {
    const GenerationRequest& r = req.request;
    Sample& s = req.samples[index];
    UA_CHECK(!s.done);
    s.done = true;
    s.finish_reason = reason;
    RequestEvent ev;
    ev.kind = RequestEvent::Kind::kFinished;
    ev.index = index;
    ev.finish_reason = reason;
    if (s.detok) {
        std::string tail = s.held + s.detok->Flush();
        if (!r.stop.empty()) {
            const size_t at = FindStop(tail, r.stop);
            if (at != std::string::npos) tail.resize(at);
        }
        if (r.detokenize) ev.text = std::move(tail);
        s.held.clear();
    }
    ev.prompt_tokens = static_cast<int>(r.prompt_ids.size());
    ev.completion_tokens = static_cast<int>(s.generated.size());
    ev.cached_tokens = req.cached_tokens;
    req.outbox.push_back(std::move(ev));
    if (s.seq_id != 0) {
        scheduler_->Finish(s.seq_id);
        by_seq_.erase(s.seq_id);
        s.seq_id = 0;
    }
    ++req.num_done;
}

void EngineImpl::FailRequest(ActiveRequest& req, const Status& error) {
    req.errored = true;
    for (int i = 0; i < static_cast<int>(req.samples.size()); ++i) {
        Sample& s = req.samples[i];
        if (s.done) continue;
        s.done = true;
        RequestEvent ev;
        ev.kind = RequestEvent::Kind::kError;
        ev.index = i;
        ev.error = error;
        ev.prompt_tokens = static_cast<int>(req.request.prompt_ids.size());
        ev.completion_tokens = static_cast<int>(s.generated.size());
        ev.cached_tokens = req.cached_tokens;
        req.outbox.push_back(std::move(ev));
        if (s.seq_id != 0) {
            scheduler_->Finish(s.seq_id);
            by_seq_.erase(s.seq_id);
            s.seq_id = 0;
        }
        ++req.num_done;
    }
}

void EngineImpl::Deliver(ActiveRequest& req) {
    const bool end = req.num_done == static_cast<int>(req.samples.size());
    if (req.outbox.empty() && !end) return;
    if (!end) {
        req.handle->Deliver(req.outbox, false);
        return;
    }
    const Clock::time_point now = Clock::now();
    RequestTimings t;
    t.queue_s = req.scheduled ? Seconds(req.first_scheduled - req.submit_time) : Seconds(now - req.submit_time);
    t.ttft_s = req.has_first_token ? Seconds(req.first_token - req.submit_time) : 0;
    t.prefill_s = req.has_first_token ? Seconds(req.first_token - req.first_scheduled) : 0;
    t.decode_s = req.has_first_token ? Seconds(now - req.first_token) : 0;
    t.e2e_s = Seconds(now - req.submit_time);
    t.inter_token_s = std::move(req.inter_token_s);
    t.prompt_tokens = static_cast<int>(req.request.prompt_ids.size());
    for (const Sample& s : req.samples) t.generation_tokens += static_cast<int>(s.generated.size());
    t.errored = req.errored;
    t.finish_reason = req.samples[0].finish_reason;
    if (!req.scheduled) {
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
    stats_.kv_bytes_used = bm.num_used() * kv_->bytes_per_block();
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
