#include "server/serving.h"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <boost/asio/post.hpp>

#include <algorithm>

namespace uniattn::server {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
    const size_t n = std::max(a.size(), b.size());
    unsigned diff = a.size() == b.size() ? 0u : 1u;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= static_cast<unsigned>(x ^ y);
    }
    return diff == 0;
}

ServingState::ServingState(ServerConfig config)
    : config_(std::move(config)), prepare_pool_(static_cast<size_t>(config_.prepare_threads)) {
    start_time_ =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void ServingState::SetEngine(Engine* engine, ChatTemplate builtin) {
    ResolvedChatTemplate t;
    t.builtin = builtin;
    t.name = ChatTemplateName(builtin);
    SetEngine(engine, std::move(t));
}

void ServingState::SetEngine(Engine* engine, ResolvedChatTemplate chat_template) {
    const ModelInfo& info = engine->model_info();
    model_.model_name = info.name;
    model_.tokenizer = &engine->tokenizer();
    model_.limits = engine->request_limits();
    if (config_.max_sequences_per_request > 0) {
        model_.limits.max_sequences_per_request = config_.max_sequences_per_request;
    }
    model_.chat_template = chat_template.builtin;
    if (chat_template.jinja) {
        // A template that names no BOS/EOS in tokenizer_config.json gets the tokenizer's.
        auto jinja = std::make_shared<JinjaChatTemplate>(*chat_template.jinja);
        const Tokenizer& tok = engine->tokenizer();
        if (!jinja->special_tokens.contains("bos_token") && tok.bos_id() >= 0) {
            jinja->special_tokens["bos_token"] = tok.IdToPiece(tok.bos_id());
        }
        if (!jinja->special_tokens.contains("eos_token") && tok.eos_id() >= 0) {
            jinja->special_tokens["eos_token"] = tok.IdToPiece(tok.eos_id());
        }
        model_.jinja_template = std::move(jinja);
    }
    chat_template_name_ = chat_template.name;
    model_.sampling_defaults = info.sampling_defaults;
    model_.sampling_defaults.Override(config_.override_generation_config);
    if (!metrics_) metrics_ = std::make_unique<Metrics>(info.name, info.max_model_len);
    metrics_->SetModelInfo(info);
    engine->SetObserver(metrics_->MakeObserver());
    engine_.store(engine, std::memory_order_release);
}

PreparePool::PreparePool(int num_threads) : work_(boost::asio::make_work_guard(ioc_)) {
    for (int i = 0; i < num_threads; ++i) {
        threads_.emplace_back([this] {
            // Linux: a thread's nice value is its own (setpriority on the thread id).
            (void)setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 10);
            ioc_.run();
        });
    }
}

void PreparePool::Stop() {
    work_.reset();
    for (auto& t : threads_) t.join();
    threads_.clear();
}

void ServingState::ReleaseMemoryAfter(size_t request_bytes) {
    constexpr size_t kLargeRequest = 1 << 20;
    if (request_bytes >= kLargeRequest) boost::asio::post(prepare_pool_.executor(), [] { malloc_trim(0); });
}

ServingState::Readiness ServingState::GetReadiness() const {
    const Engine* e = engine();
    if (!e) return Readiness::kLoading;
    if (draining()) return Readiness::kDraining;
    const EngineStats s = e->Stats();
    if (s.draining) return Readiness::kDraining;
    // An idle engine may sleep; a stall only counts while there is work it is not doing.
    if (s.seconds_since_last_step > config_.ready_max_stall_s && !e->Idle()) return Readiness::kStalled;
    return Readiness::kReady;
}

const char* ServingState::ReadinessName(Readiness r) {
    switch (r) {
        case Readiness::kLoading:
            return "loading";
        case Readiness::kReady:
            return "ready";
        case Readiness::kDraining:
            return "draining";
        case Readiness::kStalled:
            return "stalled";
    }
    return "?";
}

void ServingState::StartDraining() {
    draining_.store(true);
    if (Engine* e = engine()) e->StartDraining();
}

bool ServingState::Authorized(std::string_view authorization) const {
    if (config_.api_keys.empty()) return true;
    std::string_view key;
    constexpr std::string_view kBearer = "bearer ";
    if (authorization.size() > kBearer.size()) {
        bool scheme_ok = true;
        for (size_t i = 0; i < kBearer.size(); ++i) {
            scheme_ok &= std::tolower(static_cast<unsigned char>(authorization[i])) == kBearer[i];
        }
        if (scheme_ok) key = authorization.substr(kBearer.size());
    }
    // Check every key, so the time taken does not tell which (if any) matched.
    bool ok = false;
    for (const std::string& k : config_.api_keys) ok |= ConstantTimeEquals(key, k);
    return ok && !key.empty();
}

StatusOr<std::shared_ptr<RequestHandle>> ServingState::Submit(GenerationRequest request) {
    Engine* e = engine();
    if (!e) return Unavailable("the model is still loading");
    if (draining()) return Unavailable("the server is shutting down and admits no new requests");
    UA_ASSIGN_OR_RETURN(std::shared_ptr<RequestHandle> h, e->Submit(std::move(request)));
    std::lock_guard<std::mutex> lock(handles_mu_);
    handles_.erase(std::remove_if(handles_.begin(), handles_.end(),
                                  [](const std::weak_ptr<RequestHandle>& w) {
                                      auto s = w.lock();
                                      return !s || s->closed();
                                  }),
                   handles_.end());
    handles_.push_back(h);
    return h;
}

void ServingState::CancelAll() {
    std::vector<std::shared_ptr<RequestHandle>> live;
    {
        std::lock_guard<std::mutex> lock(handles_mu_);
        for (auto& w : handles_) {
            if (auto s = w.lock()) live.push_back(std::move(s));
        }
    }
    for (auto& h : live) h->Cancel();
}

void NotifyHub::Notify() {
    if (pending_.exchange(true, std::memory_order_acq_rel)) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (wake_) wake_();
}

void NotifyHub::Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = nullptr;
}

}  // namespace uniattn::server
