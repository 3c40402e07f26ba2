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

// The request field an error concerns travels as trailing metadata, as OpenAI's `param` does over HTTP.
constexpr char kErrorParamKey[] = "error-param";

grpc::Status ToGrpc(const Status& s, grpc::CallbackServerContext* ctx) {
    if (const std::string param = ParamOf(s); !param.empty()) ctx->AddTrailingMetadata(kErrorParamKey, param);
    return ToGrpc(s);
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

// The first byte offset at which `s` is not UTF-8, or npos.
size_t InvalidUtf8At(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > s.size()) return i;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (int k = 1; k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (cc & 0x3F);
        }
        const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return std::string_view::npos;
}

// Response strings must be UTF-8 (clients parse them as proto3 strings): a byte-fallback token piece
// (one byte of a character) becomes U+FFFD, as over HTTP.
std::string ValidUtf8(std::string s) {
    for (size_t at = InvalidUtf8At(s); at != std::string_view::npos;) {
        s.replace(at, 1, "\xEF\xBF\xBD");
        const size_t next = InvalidUtf8At(std::string_view(s).substr(at + 3));
        at = next == std::string_view::npos ? next : at + 3 + next;
    }
    return s;
}

// The server parses the request messages' string fields as bytes (server/CMakeLists.txt), so that text
// that is not UTF-8 is an INVALID_ARGUMENT naming the field instead of a failed parse.
Status CheckUtf8(std::string_view field, std::string_view value) {
    const size_t at = InvalidUtf8At(value);
    if (at == std::string_view::npos) return Status::Ok();
    return {StatusCode::kInvalidArgument, std::string(field) + ": not valid UTF-8 (at byte " + std::to_string(at) + ")",
            std::string(field)};
}

// API key, model name and engine availability, common to every method.
grpc::Status CheckCallGrpc(const ServingState& state, grpc::CallbackServerContext* ctx, const std::string& model) {
    std::string_view auth;
    const auto& md = ctx->client_metadata();
    if (md.count("authorization") > 1) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "more than one authorization metadata entry");
    }
    if (auto it = md.find("authorization"); it != md.end())
        auth = std::string_view(it->second.data(), it->second.size());
    if (!state.Authorized(auth)) {
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "missing or invalid API key (metadata authorization: Bearer <key>)");
    }
    if (!state.engine()) return ToGrpc(Unavailable("the model is still loading"));
    if (Status s = CheckUtf8("model", model); !s.ok()) return ToGrpc(s, ctx);
    if (!model.empty() && model != state.model().model_name) {
        return ToGrpc(NotFound("model '" + model + "' is not served here (this server serves '" +
                               state.model().model_name + "')"));
    }
    return grpc::Status::OK;
}

// Builds the engine request from the proto with the checks every API shares (uniattn/request.h).
StatusOr<GenerationRequest> ToEngineRequest(const pb::GenerateRequest& req, const ServedModel& m) {
    const RequestLimits& limits = m.limits;
    GenerationRequest g;
    for (const std::string& stop : req.stop()) UA_RETURN_IF_ERROR(CheckUtf8("stop", stop));
    if (req.has_n()) g.n = req.n();
    if (req.has_max_tokens()) g.max_tokens = req.max_tokens();
    const pb::SamplingParams& s = req.sampling();
    m.sampling_defaults.ApplyTo(g);  // what the request leaves unset
    if (s.has_temperature()) g.temperature = s.temperature();
    if (s.has_top_p()) g.top_p = s.top_p();
    if (s.has_top_k()) g.top_k = s.top_k();
    if (s.has_min_p()) g.min_p = s.min_p();
    if (s.has_repetition_penalty()) g.repetition_penalty = s.repetition_penalty();
    if (s.has_presence_penalty()) g.presence_penalty = s.presence_penalty();
    if (s.has_frequency_penalty()) g.frequency_penalty = s.frequency_penalty();
    if (s.has_seed()) g.seed = s.seed();
    for (const auto& [id, bias] : s.logit_bias()) g.logit_bias[id] = bias;
    g.ignore_eos = s.ignore_eos();
    g.stop.assign(req.stop().begin(), req.stop().end());
    g.stop_token_ids.assign(req.stop_token_ids().begin(), req.stop_token_ids().end());
    if (req.has_logprobs()) g.logprobs = req.logprobs();
    UA_RETURN_IF_ERROR(ValidateSampling(g, limits));  // before any tokenization

    const bool add_special = !req.has_add_special_tokens() || req.add_special_tokens();
    switch (req.prompt_case()) {
        case pb::GenerateRequest::kText:
            UA_RETURN_IF_ERROR(CheckUtf8("text", req.text()));
            UA_RETURN_IF_ERROR(CheckPromptBytes(static_cast<int64_t>(req.text().size()), limits, "prompt"));
            g.prompt_ids = m.tokenizer->Encode(req.text(), add_special && m.tokenizer->add_bos());
            break;
        case pb::GenerateRequest::kTokenIds:
            g.prompt_ids.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
            break;
        case pb::GenerateRequest::PROMPT_NOT_SET:
            return Status(StatusCode::kInvalidArgument, "prompt: set text or token_ids", "prompt");
    }
    UA_RETURN_IF_ERROR(ValidatePromptIds(g.prompt_ids, limits, "prompt"));
    UA_ASSIGN_OR_RETURN(g.max_tokens, CheckContextLength(static_cast<int64_t>(g.prompt_ids.size()),
                                                         req.has_max_tokens() ? req.max_tokens() : 16,
                                                         req.has_max_tokens(), limits, "prompt"));
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
        request_bytes_ = req->ByteSizeLong();
        grpc::Status check = CheckCallGrpc(state_, ctx, req->model());
        if (!check.ok()) return FinishOnce(check);
        auto g = ToEngineRequest(*req, state_.model());
        if (!g.ok()) return FinishOnce(ToGrpc(g.status(), ctx));
        n_ = g->n;
        logprobs_ = g->logprobs >= 0;
        auto h = state_.Submit(std::move(g).value());
        if (!h.ok()) return FinishOnce(ToGrpc(h.status(), ctx));
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
        state_.ReleaseMemoryAfter(request_bytes_);
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
                lp->mutable_chosen()->set_token(ValidUtf8(TokenText(tok, e.token)));
                lp->mutable_chosen()->set_logprob(e.logprob);
                for (const TokenLogprob& t : e.top_logprobs) {
                    pb::TokenLogprob* tp = lp->add_top();
                    tp->set_token_id(t.token);
                    tp->set_token(ValidUtf8(TokenText(tok, t.token)));
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
    size_t request_bytes_ = 0;
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
            if (Status u = CheckUtf8("text", req->text()); !u.ok()) s = ToGrpc(u, ctx);
        }
        if (s.ok()) {
            const ServedModel& m = state_.model();
            const bool add_special = !req->has_add_special_tokens() || req->add_special_tokens();
            for (int32_t id : m.tokenizer->Encode(req->text(), add_special && m.tokenizer->add_bos())) {
                resp->add_token_ids(id);
                resp->add_tokens(ValidUtf8(TokenText(*m.tokenizer, id)));
            }
            resp->set_max_model_len(m.limits.max_model_len);
        }
        reactor->Finish(s);
        return reactor;
    }

    grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx, const pb::DetokenizeRequest* req,
                                         pb::DetokenizeResponse* resp) override {
        auto* reactor = ctx->DefaultReactor();
        grpc::Status s = CheckCallGrpc(state_, ctx, req->model());
        if (s.ok()) {
            const ServedModel& m = state_.model();
            std::vector<int32_t> ids;
            for (int32_t id : req->token_ids()) {
                ids.push_back(id);
            }
            if (Status v = ValidatePromptIds(ids, m.limits, "token_ids"); !v.ok() && !ids.empty()) s = ToGrpc(v, ctx);
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
            const std::string& t = state_.chat_template_name();
            resp->set_chat_template(t == ChatTemplateName(ChatTemplate::kNone) ? "" : t);
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
