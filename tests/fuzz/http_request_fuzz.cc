// libFuzzer target: arbitrary bytes on an HTTP connection, read as uniattn-serve reads them. Boost.Beast's
// request parser with the server's limits (16 KiB of headers, server.max_body_bytes of body) reads header
// then body from an in-memory stream that hands out the bytes in pieces (as TCP does), for as many
// pipelined requests as the bytes hold; then the server's own code decides the answer: a read failure goes
// through ClassifyHttpReadError, a parsed request through MatchHttpRoute, and the bodies of the POST routes
// through ParseOpenAiRequest, HandleTokenize and HandleDetokenize (a byte tokenizer stands in for the model).
// Each answer is serialised as the server does and its body must parse back as OpenAI's error shape.
// Byte 0 of the input picks the read size and the body limit; the rest is what the client sends.
#include <boost/asio/io_context.hpp>
#include <boost/beast/_experimental/test/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>

#include "server/http_route.h"
#include "server/openai_request.h"
#include "tests/common/byte_tokenizer.h"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace uniattn::server;

constexpr int kMaxPipelined = 8;

// An answer as the server would send it: OpenAI's error shape (or the handler's JSON) with a status.
void CheckError(const ApiError& e, unsigned version) {
    if (e.http_status < 400 || e.http_status >= 600) std::abort();
    const std::string body = e.Body();
    const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("error") || !j["error"]["message"].is_string() ||
        !j["error"]["type"].is_string()) {
        std::abort();
    }
    http::response<http::string_body> res{static_cast<http::status>(e.http_status), version};
    res.set(http::field::content_type, "application/json");
    res.body() = body;
    res.keep_alive(false);
    res.prepare_payload();
    std::ostringstream os;
    os << res;
    if (os.str().size() < body.size()) std::abort();
}

void CheckJson(const nlohmann::json& j) {
    if (DumpJson(j).empty()) std::abort();
}

// What the server does with one parsed request (without an engine: generation stops at the engine request).
void Handle(const http::request<http::string_body>& req, const ServedModel& model) {
    auto match = MatchHttpRoute(req.method(), req.method_string(), req.target());
    if (!match.ok()) {
        const int status = match.error().http_status;
        if (status != 404 && status != 405) std::abort();
        return CheckError(match.error(), req.version());
    }
    const HttpRouteMatch& m = match.value();
    switch (m.route) {
        case HttpRoute::kPreflight:
            if (req.method() != http::verb::options) std::abort();
            return;
        case HttpRoute::kHealth:
        case HttpRoute::kReady:
        case HttpRoute::kMetrics:
        case HttpRoute::kModels:
            if (req.method() != http::verb::get) std::abort();
            return;
        case HttpRoute::kModel:
            if (m.model_id.empty() || req.method() != http::verb::get) std::abort();
            if (m.model_id != model.model_name) {
                return CheckError(
                    ApiError::NotFound("The model `" + m.model_id + "` does not exist.", "model", "model_not_found"),
                    req.version());
            }
            return;
        case HttpRoute::kCompletions:
        case HttpRoute::kChatCompletions: {
            if (req.method() != http::verb::post || !m.needs_auth || !m.needs_model) std::abort();
            auto r = ParseOpenAiRequest(
                m.route == HttpRoute::kCompletions ? Endpoint::kCompletions : Endpoint::kChatCompletions, req.body(),
                model);
            if (!r.ok()) return CheckError(r.error(), req.version());
            for (const auto& p : r.value().prompts) {
                if (p.empty() || static_cast<int>(p.size()) > model.limits.max_model_len) std::abort();
            }
            return;
        }
        case HttpRoute::kTokenize: {
            auto r = HandleTokenize(req.body(), model);
            if (!r.ok()) return CheckError(r.error(), req.version());
            return CheckJson(r.value());
        }
        case HttpRoute::kDetokenize: {
            auto r = HandleDetokenize(req.body(), model);
            if (!r.ok()) return CheckError(r.error(), req.version());
            return CheckJson(r.value());
        }
    }
}

// A read that failed: the server either closes or answers 400/413/431.
void ReadFailed(beast::error_code ec, int64_t body_limit, unsigned version) {
    const HttpReadFailure f = ClassifyHttpReadError(ec, body_limit);
    switch (f.action) {
        case HttpReadFailure::Action::kClose:
        case HttpReadFailure::Action::kHardClose:
            return;
        case HttpReadFailure::Action::kAnswer:
            if (f.error.http_status != 400 && f.error.http_status != 413 && f.error.http_status != 431) std::abort();
            return CheckError(f.error, version);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const uniattn::testutil::ByteTokenizer tok;
    if (size < 1) return 0;
    const uint8_t sel = data[0];
    static constexpr size_t kReadSizes[] = {1, 2, 7, 64, 512, 4096, 1 << 20, 13};
    const size_t read_size = kReadSizes[sel & 7];
    // server.max_body_bytes: small enough that the fuzzer reaches the limit (the default is 8 MiB).
    const int64_t body_limit = (sel & 8) ? 64 : 16 * 1024;

    ServedModel model;
    model.model_name = "m";
    model.tokenizer = &tok;
    model.limits.max_model_len = (sel & 16) ? 4096 : 64;
    model.limits.vocab_size = tok.vocab_size();
    model.chat_template = (sel & 32) ? ChatTemplate::kLlama3 : ChatTemplate::kPlain;

    boost::asio::io_context ioc;
    beast::test::stream client(ioc, std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
    client.read_size(read_size);
    client.close_remote();  // the client sends its bytes and then half-closes
    beast::flat_buffer buffer;
    for (int i = 0; i < kMaxPipelined; ++i) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(kHttpHeaderLimit);
        parser.body_limit(static_cast<uint64_t>(body_limit));
        beast::error_code ec;
        http::read_header(client, buffer, parser, ec);
        const unsigned version = parser.got_some() ? parser.get().version() : 11;
        if (ec) {
            ReadFailed(ec, body_limit, version);
            break;
        }
        if (!parser.is_header_done()) std::abort();
        if (auto len = parser.content_length(); len && *len > static_cast<uint64_t>(body_limit)) {
            CheckError(BodyTooLargeError(body_limit), version);
            break;
        }
        http::read(client, buffer, parser, ec);
        if (ec) {
            ReadFailed(ec, body_limit, version);
            break;
        }
        if (!parser.is_done()) std::abort();
        http::request<http::string_body> req = parser.release();
        if (req.body().size() > static_cast<size_t>(body_limit)) std::abort();
        Handle(req, model);
        if (!req.keep_alive()) break;
    }
    return 0;
}
