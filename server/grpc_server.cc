#include "server/grpc_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <deque>
#include <mutex>

#include "server/api_error.h"
#include "server/openai_request.h"
#include "uniattn/v1/uniattn.grpc.pb.h"

namespace uniattn::server {
namespace {

namespace net = boost::asio;
namespace pb = ::uniattn::v1;

constexpr char kServiceName[] = "uniattn.v1.UniAttn";

grpc::Status ToGrpc(const Status& s) {
    return grpc::Status(static_cast<grpc::StatusCode>(GrpcCodeFromStatus(s)), s.message());
}

pb::FinishReason ToProto(FinishReason r) {
    switch (r) {
        case FinishReason::kStop:
            return pb::FINISH_REASON_STOP;
        case FinishReason::kLength:
            return pb::FINISH_REASON_LENGTH;
        case FinishReason::kAbort:
            return pb::FINISH_REASON_ABORT;
    }
    return pb::FINISH_REASON_UNSPECIFIED;
}

// API key, model name and engine availability, common to every method.
grpc::Status CheckCallGrpc(const ServingState& state, const grpc::CallbackServerContext* ctx,
                           const std::string& model) {
    std::string_view auth;
    const auto& md = ctx->client_metadata();
    if (auto it = md.find("authorization"); it != md.end())
        auth = std::string_view(it->second.data(), it->second.size());
    if (!state.Authorized(auth)) {
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "missing or invalid API key (metadata authorization: Bearer <key>)");
    }
    if (!state.engine()) return ToGrpc(Unavailable("the model is still loading"));
    if (!model.empty() && model != state.model().model_name) {
        return ToGrpc(NotFound("model '" + model + "' is not served here (this server serves '" +
                               state.model().model_name + "')"));
    }
    return grpc::Status::OK;
}

Status CheckRange(const char* name, double v, double lo, double hi, bool lo_open = false) {
    if (!(v >= lo && v <= hi) || (lo_open && v == lo)) {
        return InvalidArgument(std::string(name) + ": " + std::to_string(v) + " is out of range");
    }
    return Status::Ok();
}

// Builds the engine request from the proto, with the same limits as the HTTP API.
StatusOr<GenerationRequest> ToEngineRequest(const pb::GenerateRequest& req, const ModelContext& m) {
    GenerationRequest g;
    const bool add_special = !req.has_add_special_tokens() || req.add_special_tokens();
    switch (req.prompt_case()) {
        case pb::GenerateRequest::kText:
            g.prompt_ids = m.tokenizer->Encode(req.text(), add_special && m.tokenizer->add_bos());
            break;
        case pb::GenerateRequest::kTokenIds:
            for (int32_t id : req.token_ids().ids()) {
                if (id < 0 || id >= m.vocab_size) {
                    return InvalidArgument("token_ids: " + std::to_string(id) + " is not a token id (vocabulary size " +
                                           std::to_string(m.vocab_size) + ")");
                }
                g.prompt_ids.push_back(id);
            }
            break;
        case pb::GenerateRequest::PROMPT_NOT_SET:
            return InvalidArgument("prompt: set text or token_ids");
    }
    if (g.prompt_ids.empty()) return InvalidArgument("prompt: the prompt is empty (no tokens)");
    const int len = static_cast<int>(g.prompt_ids.size());
    if (req.has_n()) {
        if (req.n() < 1 || req.n() > 128) return InvalidArgument("n: must be in [1, 128]");
        g.n = req.n();
    }
    if (len >= m.max_model_len) {
        return InvalidArgument("prompt: the prompt has " + std::to_string(len) +
                               " tokens; this model's maximum context length is " + std::to_string(m.max_model_len) +
                               " tokens");
    }
    if (req.has_max_tokens()) {
        if (req.max_tokens() < 1) return InvalidArgument("max_tokens: must be >= 1");
        if (len + req.max_tokens() > m.max_model_len) {
            return InvalidArgument("max_tokens: the prompt has " + std::to_string(len) + " tokens and max_tokens is " +
                                   std::to_string(req.max_tokens()) + "; this model's maximum context length is " +
                                   std::to_string(m.max_model_len) + " tokens");
        }
        g.max_tokens = req.max_tokens();
    } else {
        g.max_tokens = std::min(16, m.max_model_len - len);
    }
    const pb::SamplingParams& s = req.sampling();
    if (s.has_temperature()) {
        UA_RETURN_IF_ERROR(CheckRange("temperature", s.temperature(), 0, 100));
        g.temperature = s.temperature();
    }
    if (s.has_top_p()) {
        UA_RETURN_IF_ERROR(CheckRange("top_p", s.top_p(), 0, 1, true));
        g.top_p = s.top_p();
    }
    if (s.has_top_k()) {
        if (s.top_k() < -1) return InvalidArgument("top_k: must be -1, 0 or positive");
        g.top_k = s.top_k();
    }
    if (s.has_min_p()) {
        UA_RETURN_IF_ERROR(CheckRange("min_p", s.min_p(), 0, 1));
        g.min_p = s.min_p();
    }
    if (s.has_repetition_penalty()) {
        UA_RETURN_IF_ERROR(CheckRange("repetition_penalty", s.repetition_penalty(), 0, 100, true));
        g.repetition_penalty = s.repetition_penalty();
    }
    if (s.has_presence_penalty()) {
        UA_RETURN_IF_ERROR(CheckRange("presence_penalty", s.presence_penalty(), -2, 2));
        g.presence_penalty = s.presence_penalty();
    }
    if (s.has_frequency_penalty()) {
        UA_RETURN_IF_ERROR(CheckRange("frequency_penalty", s.frequency_penalty(), -2, 2));
        g.frequency_penalty = s.frequency_penalty();
    }
    if (s.has_seed()) g.seed = s.seed();
    for (const auto& [id, bias] : s.logit_bias()) {
        if (id < 0 || id >= m.vocab_size)
            return InvalidArgument("logit_bias: " + std::to_string(id) + " is not a token id");
        UA_RETURN_IF_ERROR(CheckRange("logit_bias", bias, -100, 100));
        g.logit_bias[id] = bias;
    }
    g.ignore_eos = s.ignore_eos();
    for (const std::string& stop : req.stop()) {
        if (stop.empty()) return InvalidArgument("stop: stop strings must not be empty");
        g.stop.push_back(stop);
    }
    if (req.stop_size() > 16) return InvalidArgument("stop: at most 16 stop strings are allowed");
    for (int32_t id : req.stop_token_ids()) {
        if (id < 0 || id >= m.vocab_size)
            return InvalidArgument("stop_token_ids: " + std::to_string(id) + " is not a token id");
        g.stop_token_ids.push_back(id);
    }
    if (req.has_logprobs()) {
        if (req.logprobs() < 0 || req.logprobs() > 20) return InvalidArgument("logprobs: must be in [0, 20]");
        g.logprobs = req.logprobs();
    }
    return g;
}

// One Generate call. Owned by itself (self_) from start until OnDone, so that notifications posted to the
// io_context after the call ended find nothing to do.
class GenerateCall final : public grpc::ServerWriteReactor<pb::GenerateResponse>,
                           public std::enable_shared_from_this<GenerateCall> {
  public:
    GenerateCall(ServingState& state, net::io_context& ioc) : state_(state), ioc_(ioc) { state_.JobStarted(); }

    void Start(grpc::CallbackServerContext* ctx, const pb::GenerateRequest* req) {
        self_ = shared_from_this();
        grpc::Status check = CheckCallGrpc(state_, ctx, req->model());
        if (!check.ok()) return FinishOnce(check);
        auto g = ToEngineRequest(*req, state_.model());
        if (!g.ok()) return FinishOnce(ToGrpc(g.status()));
        n_ = g->n;
        logprobs_ = g->logprobs >= 0;
        auto h = state_.Submit(std::move(g).value());
        if (!h.ok()) return FinishOnce(ToGrpc(h.status()));
        handle_ = std::move(h).value();
        hub_ = std::make_shared<NotifyHub>([weak = weak_from_this(), &ioc = ioc_] {
            net::post(ioc, [weak] {
                if (auto self = weak.lock()) self->Pump();
            });
        });
        handle_->SetNotify([hub = hub_] { hub->Notify(); });
        Pump();
    }

    void OnWriteDone(bool ok) override {
        {
            std::lock_guard<std::mutex> lock(mu_);
            writing_ = false;
            if (!ok) cancelled_ = true;
        }
        if (!ok && handle_) handle_->Cancel();
        Pump();
    }

    void OnCancel() override {
        {
            std::lock_guard<std::mutex> lock(mu_);
            cancelled_ = true;
        }
        if (handle_) {
            spdlog::debug("gRPC Generate cancelled by the client; cancelling request {}", handle_->id());
            if (state_.metrics()) state_.metrics()->CountClientDisconnect();
            handle_->Cancel();
        }
        Pump();
    }

    void OnDone() override {
        if (hub_) hub_->Detach();
        if (handle_ && !handle_->closed()) handle_->Cancel();
        state_.JobFinished();
        self_.reset();  // may delete this
    }

  private:
    // Any thread. Decides under the lock, acts (StartWrite/Finish) outside it.
    void Pump() {
        std::optional<grpc::Status> finish;
        bool write = false;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (finished_ || !handle_) return;
            hub_->Consumed();
            RequestEvent e;
            while (handle_->TryNext(&e)) pending_.push_back(std::move(e));
            if (writing_) return;
            if (cancelled_) {
                finish = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
            } else if (!pending_.empty()) {
                write = BuildMessage(&finish);
            } else if (num_done_ >= n_ || handle_->closed()) {
                finish = num_done_ >= n_ ? grpc::Status::OK
                                         : grpc::Status(grpc::StatusCode::INTERNAL,
                                                        "the engine ended the request without finishing every sample");
            }
            if (finish) finished_ = true;
            if (write) writing_ = true;
        }
        if (write) StartWrite(&msg_);
        if (finish) Finish(*finish);
    }

    // Takes the next message's events off pending_: consecutive tokens of one sample go together.
    bool BuildMessage(std::optional<grpc::Status>* finish) {
        msg_.Clear();
        const RequestEvent& first = pending_.front();
        if (first.kind == RequestEvent::Kind::kError) {
            *finish = ToGrpc(first.error);
            pending_.clear();
            return false;
        }
        msg_.set_index(first.index);
        const int index = first.index;
        const Tokenizer& tok = *state_.model().tokenizer;
        std::string text;
        while (!pending_.empty() && pending_.front().index == index &&
               pending_.front().kind != RequestEvent::Kind::kError) {
            RequestEvent e = std::move(pending_.front());
            pending_.pop_front();
            text += e.text;
            if (e.kind == RequestEvent::Kind::kFinished) {
                msg_.set_finish_reason(ToProto(e.finish_reason));
                pb::Usage* u = msg_.mutable_usage();
                u->set_prompt_tokens(e.prompt_tokens);
                u->set_completion_tokens(e.completion_tokens);
                u->set_cached_tokens(e.cached_tokens);
                ++num_done_;
                break;
            }
            msg_.add_token_ids(e.token);
            if (logprobs_) {
                pb::Logprobs* lp = msg_.add_logprobs();
                lp->mutable_chosen()->set_token_id(e.token);
                lp->mutable_chosen()->set_token(TokenText(tok, e.token));
                lp->mutable_chosen()->set_logprob(e.logprob);
                for (const TokenLogprob& t : e.top_logprobs) {
                    pb::TokenLogprob* tp = lp->add_top();
                    tp->set_token_id(t.token);
                    tp->set_token(TokenText(tok, t.token));
                    tp->set_logprob(t.logprob);
                }
            }
        }
        msg_.set_text(text);
        return true;
    }

    void FinishOnce(const grpc::Status& s) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (finished_) return;
            finished_ = true;
        }
        Finish(s);
    }

    ServingState& state_;
    net::io_context& ioc_;
    std::shared_ptr<GenerateCall> self_;
    std::shared_ptr<RequestHandle> handle_;
    std::shared_ptr<NotifyHub> hub_;
    std::mutex mu_;
    std::deque<RequestEvent> pending_;
    pb::GenerateResponse msg_;
    bool writing_ = false;
    bool finished_ = false;
    bool cancelled_ = false;
    bool logprobs_ = false;
    int n_ = 1;
    int num_done_ = 0;
};

class Service final : public pb::UniAttn::CallbackService {
  public:
    Service(ServingState& state, net::io_context& ioc) : state_(state), ioc_(ioc) {}

    grpc::ServerWriteReactor<pb::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                             const pb::GenerateRequest* req) override {
        auto call = std::make_shared<GenerateCall>(state_, ioc_);
        call->Start(ctx, req);
        return call.get();
    }

    grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx, const pb::TokenizeRequest* req,
                                       pb::TokenizeResponse* resp) override {
        auto* reactor = ctx->DefaultReactor();
        grpc::Status s = CheckCallGrpc(state_, ctx, req->model());
        if (s.ok()) {
            const ModelContext& m = state_.model();
            const bool add_special = !req->has_add_special_tokens() || req->add_special_tokens();
            for (int32_t id : m.tokenizer->Encode(req->text(), add_special && m.tokenizer->add_bos())) {
                resp->add_token_ids(id);
                resp->add_tokens(TokenText(*m.tokenizer, id));
            }
            resp->set_max_model_len(m.max_model_len);
        }
        reactor->Finish(s);
        return reactor;
    }

    grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx, const pb::DetokenizeRequest* req,
                                         pb::DetokenizeResponse* resp) override {
        auto* reactor = ctx->DefaultReactor();
        grpc::Status s = CheckCallGrpc(state_, ctx, req->model());
        if (s.ok()) {
            const ModelContext& m = state_.model();
            std::vector<int32_t> ids;
            for (int32_t id : req->token_ids()) {
                if (id < 0 || id >= m.vocab_size) {
                    s = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                     "token_ids: " + std::to_string(id) + " is not a token id");
                    break;
                }
                ids.push_back(id);
            }
            if (s.ok()) resp->set_text(m.tokenizer->Decode(ids));
        }
        reactor->Finish(s);
        return reactor;
    }

    grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const pb::GetModelInfoRequest*,
                                           pb::ModelInfo* resp) override {
        auto* reactor = ctx->DefaultReactor();
        grpc::Status s = CheckCallGrpc(state_, ctx, "");
        if (s.ok()) {
            const ModelInfo& info = state_.engine()->model_info();
            resp->set_name(info.name);
            resp->set_architecture(info.config.architecture);
            resp->set_backend(info.backend);
            resp->set_max_model_len(info.max_model_len);
            resp->set_block_size(info.block_size);
            resp->set_vocab_size(info.config.vocab_size);
            resp->set_num_layers(info.config.num_layers);
            resp->set_num_heads(info.config.num_heads);
            resp->set_num_kv_heads(info.config.num_kv_heads);
            resp->set_head_dim(info.config.head_dim);
            int reuse = 0;
            for (LayerKind k : info.config.layer_kinds) reuse += k == LayerKind::kReuse ? 1 : 0;
            resp->set_num_reuse_layers(reuse);
            resp->set_kv_bytes_per_token(info.kv_bytes_per_token);
            resp->set_kv_bytes_per_token_dense(info.kv_bytes_per_token_dense);
            const ChatTemplate t = state_.model().chat_template;
            resp->set_chat_template(t == ChatTemplate::kNone ? "" : ChatTemplateName(t));
        }
        reactor->Finish(s);
        return reactor;
    }

  private:
    ServingState& state_;
    net::io_context& ioc_;
};

}  // namespace

class GrpcServer::Impl {
  public:
    Impl(ServingState& state, net::io_context& ioc) : state_(state), service_(state, ioc) {}

    Status Start(const std::string& host, int port) {
        grpc::EnableDefaultHealthCheckService(true);
        grpc::ServerBuilder builder;
        const std::string address =
            (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
        builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
        builder.RegisterService(&service_);
        builder.SetMaxReceiveMessageSize(
            static_cast<int>(std::min<int64_t>(state_.config().max_body_bytes, INT32_MAX)));
        server_ = builder.BuildAndStart();
        if (!server_ || port_ == 0) return Unavailable("cannot listen for gRPC on " + address);
        SetServing(false);
        return Status::Ok();
    }

    void SetServing(bool serving) {
        if (!server_) return;
        if (auto* health = server_->GetHealthCheckService()) {
            health->SetServingStatus(serving);
            health->SetServingStatus(kServiceName, serving);
        }
    }

    void Shutdown(std::chrono::milliseconds deadline) {
        if (!server_) return;
        server_->Shutdown(std::chrono::system_clock::now() + deadline);
        server_->Wait();
        server_.reset();
    }

    int port() const { return port_; }

  private:
    ServingState& state_;
    Service service_;
    std::unique_ptr<grpc::Server> server_;
    int port_ = 0;
};

GrpcServer::GrpcServer(ServingState& state, net::io_context& ioc) : impl_(std::make_unique<Impl>(state, ioc)) {}
GrpcServer::~GrpcServer() { impl_->Shutdown(std::chrono::milliseconds(0)); }
Status GrpcServer::Start(const std::string& host, int port) { return impl_->Start(host, port); }
int GrpcServer::port() const { return impl_->port(); }
void GrpcServer::SetServing(bool serving) { impl_->SetServing(serving); }
void GrpcServer::Shutdown(std::chrono::milliseconds deadline) { impl_->Shutdown(deadline); }

}  // namespace uniattn::server
