// A scripted Engine for server tests: a byte-level tokenizer and an engine thread that "generates" the
// bytes of a script, one token per tick. Deterministic, no model files, fast.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "tests/common/byte_tokenizer.h"
#include "uniattn/engine.h"

namespace uniattn::server::testing {

// ids: 0 <unk>, 1 <s>, 2 </s>, 3 + byte (tests/common/byte_tokenizer.h).
using ByteTokenizer = testutil::ByteTokenizer;

struct FakeEngineOptions {
    std::string script = "abcdefghijklmnopqrstuvwxyz";  // generated text; EOS after it unless ignore_eos
    std::chrono::milliseconds token_delay{0};
    int max_model_len = 64;
    int max_n = RequestLimits::kMaxSamples;  // the engine's n limit (min(128, max_num_seqs) in the real one)
    int max_queued = 64;
    bool fail_after_first_token = false;  // emit kError after one token
    bool throw_on_read = false;           // RequestHandle::TryNext throws (a bug in the reader's path)
    int cached_tokens = 0;
};

class FakeHandle final : public RequestHandle {
  public:
    explicit FakeHandle(uint64_t id, bool throw_on_read = false) : id_(id), throw_on_read_(throw_on_read) {}
    uint64_t id() const override { return id_; }
    bool Next(RequestEvent* e, std::chrono::milliseconds timeout) override {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, timeout, [&] { return !events_.empty() || closed_; });
        return PopLocked(e);
    }
    bool TryNext(RequestEvent* e) override {
        if (throw_on_read_) throw std::runtime_error("simulated failure while reading events");
        std::lock_guard<std::mutex> lock(mu_);
        return PopLocked(e);
    }
    bool closed() const override {
        std::lock_guard<std::mutex> lock(mu_);
        return closed_ && events_.empty();
    }
    void Cancel() override { cancelled_ = true; }
    void SetNotify(std::function<void()> notify) override {
        std::lock_guard<std::mutex> lock(mu_);
        notify_ = std::move(notify);
    }

    // Engine side.
    void Push(RequestEvent e, bool close) {
        std::function<void()> notify;
        {
            std::lock_guard<std::mutex> lock(mu_);
            events_.push_back(std::move(e));
            if (close) closed_ = true;
            notify = notify_;
        }
        cv_.notify_all();
        if (notify) notify();
    }
    bool cancelled() const { return cancelled_; }

  private:
    bool PopLocked(RequestEvent* e) {
        if (events_.empty()) return false;
        *e = std::move(events_.front());
        events_.pop_front();
        return true;
    }
    uint64_t id_;
    bool throw_on_read_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<RequestEvent> events_;
    bool closed_ = false;
    std::atomic<bool> cancelled_{false};
    std::function<void()> notify_;
};

class FakeEngine final : public Engine {
  public:
    explicit FakeEngine(FakeEngineOptions options = {}) : options_(std::move(options)) {
        info_.name = "fake-model";
        info_.dir = "/fake";
        info_.config.vocab_size = tokenizer_.vocab_size();
        info_.config.architecture = "FakeForCausalLM";
        info_.max_model_len = options_.max_model_len;
        info_.block_size = 16;
        info_.kv_bytes_per_token = 1000;
        info_.kv_bytes_per_token_dense = 1500;
        info_.backend = "fake";
        limits_.vocab_size = tokenizer_.vocab_size();
        limits_.max_model_len = options_.max_model_len;
        limits_.max_n = options_.max_n;
        limits_.max_sequences_per_request = options_.max_n;
        limits_.max_prompt_bytes = static_cast<int64_t>(tokenizer_.max_token_bytes()) * options_.max_model_len;
        thread_ = std::thread([this] { Loop(); });
    }
    ~FakeEngine() override {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

    StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request) override {
        if (request.prompt_ids.empty()) return InvalidArgument("prompt_ids: empty");
        std::lock_guard<std::mutex> lock(mu_);
        if (draining_) return Unavailable("draining");
        if (static_cast<int>(queue_.size()) >= options_.max_queued) return ResourceExhausted("queue full");
        auto h = std::make_shared<FakeHandle>(++next_id_, options_.throw_on_read);
        queue_.push_back({std::move(request), h});
        last_request_ = queue_.back().request;
        ++num_submitted_;
        cv_.notify_all();
        return std::shared_ptr<RequestHandle>(h);
    }
    void SetObserver(std::shared_ptr<EngineObserver> observer) override { observer_ = std::move(observer); }
    const ModelInfo& model_info() const override { return info_; }
    const RequestLimits& request_limits() const override { return limits_; }
    const Tokenizer& tokenizer() const override { return tokenizer_; }
    EngineStats Stats() const override {
        std::lock_guard<std::mutex> lock(mu_);
        EngineStats s;
        s.num_running = running_;
        s.num_waiting = static_cast<int>(queue_.size());
        s.num_blocks_total = 100;
        s.num_blocks_used = running_;
        s.kv_bytes_used = running_ * 16000;
        s.kv_bytes_total = 1600000;
        s.prompt_tokens = prompt_tokens_;
        s.generation_tokens = generation_tokens_;
        s.steps = steps_;
        s.draining = draining_;
        return s;
    }
    void StartDraining() override {
        std::lock_guard<std::mutex> lock(mu_);
        draining_ = true;
    }
    bool Idle() const override {
        std::lock_guard<std::mutex> lock(mu_);
        return queue_.empty() && running_ == 0;
    }

    // Test hooks.
    GenerationRequest last_request() const {
        std::lock_guard<std::mutex> lock(mu_);
        return last_request_;
    }
    int num_cancelled() const { return num_cancelled_; }
    int num_submitted() const {
        std::lock_guard<std::mutex> lock(mu_);
        return num_submitted_;
    }

  private:
    struct Pending {
        GenerationRequest request;
        std::shared_ptr<FakeHandle> handle;
    };

    void Loop() {
        for (;;) {
            Pending p;
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
                if (stop_) {
                    for (auto& q : queue_) Abort(q);
                    return;
                }
                p = std::move(queue_.front());
                queue_.pop_front();
                ++running_;
                prompt_tokens_ += static_cast<int64_t>(p.request.prompt_ids.size());
            }
            Generate(p);
            std::lock_guard<std::mutex> lock(mu_);
            --running_;
        }
    }

    void Abort(Pending& p) {
        for (int i = 0; i < p.request.n; ++i) {
            RequestEvent f;
            f.kind = RequestEvent::Kind::kFinished;
            f.index = i;
            f.finish_reason = FinishReason::kAbort;
            p.handle->Push(f, i + 1 == p.request.n);
        }
    }

    void Generate(Pending& p) {
        const GenerationRequest& r = p.request;
        const int n = r.n;
        std::vector<int> produced(n, 0);
        std::vector<bool> done(n, false);
        int num_done = 0;
        size_t pos = 0;
        RequestTimings timings;
        timings.prompt_tokens = static_cast<int>(r.prompt_ids.size());
        auto finish = [&](int i, FinishReason reason) {
            RequestEvent f;
            f.kind = RequestEvent::Kind::kFinished;
            f.index = i;
            f.finish_reason = reason;
            f.prompt_tokens = static_cast<int>(r.prompt_ids.size());
            f.completion_tokens = produced[i];
            f.cached_tokens = options_.cached_tokens;
            done[i] = true;
            ++num_done;
            timings.finish_reason = reason;
            p.handle->Push(f, num_done == n);
        };
        while (num_done < n) {
            if (options_.token_delay.count() > 0) std::this_thread::sleep_for(options_.token_delay);
            {
                std::lock_guard<std::mutex> lock(mu_);
                ++steps_;
                if (stop_) {
                    for (int i = 0; i < n; ++i) {
                        if (!done[i]) finish(i, FinishReason::kAbort);
                    }
                    break;
                }
            }
            if (p.handle->cancelled()) {
                ++num_cancelled_;
                for (int i = 0; i < n; ++i) {
                    if (!done[i]) finish(i, FinishReason::kAbort);
                }
                break;
            }
            for (int i = 0; i < n; ++i) {
                if (done[i]) continue;
                if (options_.fail_after_first_token && produced[i] == 1) {
                    RequestEvent e;
                    e.kind = RequestEvent::Kind::kError;
                    e.index = i;
                    e.error = Internal("simulated engine failure");
                    done[i] = true;
                    ++num_done;
                    timings.errored = true;
                    p.handle->Push(e, num_done == n);
                    continue;
                }
                if (produced[i] >= r.max_tokens) {
                    finish(i, FinishReason::kLength);
                    continue;
                }
                if (pos >= options_.script.size() && !r.ignore_eos) {
                    finish(i, FinishReason::kStop);
                    continue;
                }
                const char ch = options_.script[pos % options_.script.size()];
                RequestEvent e;
                e.kind = RequestEvent::Kind::kToken;
                e.index = i;
                e.token = 3 + static_cast<unsigned char>(ch);
                e.text = std::string(1, ch);
                if (r.logprobs >= 0) {
                    e.logprob = -0.5f;
                    for (int k = 0; k < r.logprobs; ++k) e.top_logprobs.push_back({3 + 'a' + k, -0.5f - k});
                }
                ++produced[i];
                {
                    std::lock_guard<std::mutex> lock(mu_);
                    ++generation_tokens_;
                }
                p.handle->Push(std::move(e), false);
            }
            ++pos;
        }
        timings.generation_tokens = produced.empty() ? 0 : produced[0];
        if (auto obs = observer_) {
            obs->OnStep(timings.prompt_tokens, 1, 0.0001, 0.001, 0.0001);
            obs->OnRequestFinished(timings);
        }
    }

    FakeEngineOptions options_;
    ByteTokenizer tokenizer_;
    ModelInfo info_;
    RequestLimits limits_;
    std::shared_ptr<EngineObserver> observer_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Pending> queue_;
    GenerationRequest last_request_;
    bool stop_ = false;
    bool draining_ = false;
    int running_ = 0;
    int num_submitted_ = 0;
    std::atomic<int> num_cancelled_{0};
    int64_t prompt_tokens_ = 0;
    int64_t generation_tokens_ = 0;
    int64_t steps_ = 0;
    uint64_t next_id_ = 0;
    std::thread thread_;
};

}  // namespace uniattn::server::testing
