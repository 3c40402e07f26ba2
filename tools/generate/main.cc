// uniattn-generate: one prompt, one completion, on the CPU backend (or another compiled-in backend).
//   uniattn-generate --model DIR --prompt TEXT --max-tokens N [--temperature T --top-p P --top-k K
//                    --seed S] [--json] [--threads N] [--backend cpu] [--ignore-eos] [--stats]
// Without --prompt it reads prompts from stdin, one per line (interactive use).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "engine_setup.h"
#include "model/model.h"
#include "model/session.h"
#include "sampling/sampler.h"
#include "tools/cli.h"
#include "uniattn/json_io.h"

namespace uniattn {
namespace {

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-generate: %s\n", s.message().c_str());
    return 1;
}

struct Options {
    int max_tokens = 64;
    bool json = false;
    bool ignore_eos = false;
    bool stats = false;
    SamplingParams sampling;
};

Status RunOne(const Model& model, Session& session, const std::string& prompt, const Options& o) {
    const Tokenizer& tok = *model.tokenizer;
    std::vector<int32_t> prompt_ids = tok.Encode(prompt, tok.add_bos());
    if (prompt_ids.empty()) return InvalidArgument("the prompt encodes to no tokens");
    const int room = session.capacity() - static_cast<int>(prompt_ids.size());
    if (room <= 0) {
        return FailedPrecondition("the prompt has " + std::to_string(prompt_ids.size()) +
                                  " tokens; the model's context length is " + std::to_string(session.capacity()));
    }
    session.Reset();
    Sampler sampler(o.sampling, static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
    IncrementalDetokenizer detok(&tok, prompt_ids);
    std::vector<int32_t> generated;
    std::string text;
    std::vector<float> logits;
    const int vocab = model.config.vocab_size;

    const auto t0 = std::chrono::steady_clock::now();
    UA_RETURN_IF_ERROR(session.Append(prompt_ids, false, &logits));
    const auto t1 = std::chrono::steady_clock::now();
    const int limit = std::min(o.max_tokens, room);
    // The engine's rule: the tokenizer's, config.json's and generation_config.json's eos ids all end a reply.
    UA_ASSIGN_OR_RETURN(const GenerationConfig generation, GenerationConfig::LoadDir(model.dir));
    const std::vector<int32_t> eos = EosTokenIds(tok, model.config, generation);
    while (static_cast<int>(generated.size()) < limit) {
        const SampleResult r = sampler.Sample(logits.data(), vocab, prompt_ids, generated);
        if (!o.ignore_eos && std::find(eos.begin(), eos.end(), r.token) != eos.end()) break;
        generated.push_back(r.token);
        const std::string piece = detok.Push(r.token);
        text += piece;
        if (!o.json) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        }
        if (static_cast<int>(generated.size()) == limit) break;
        UA_RETURN_IF_ERROR(session.Append({r.token}, false, &logits));
    }
    const std::string tail = detok.Flush();
    text += tail;
    const auto t2 = std::chrono::steady_clock::now();
    if (o.json) {
        OrderedJson out = OrderedJson::object();
        OrderedJson pids = OrderedJson::array(), ids = OrderedJson::array();
        for (int32_t id : prompt_ids) pids.push_back(id);
        for (int32_t id : generated) ids.push_back(id);
        out["prompt_ids"] = std::move(pids);
        out["ids"] = std::move(ids);
        out["text"] = text;
        std::printf("%s\n", DumpJson(out).c_str());
    } else {
        std::printf("%s\n", tail.c_str());
    }
    if (o.stats) {
        const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
        const double decode_s = std::chrono::duration<double>(t2 - t1).count();
        const size_t decoded = generated.empty() ? 0 : generated.size() - 1;
        std::fprintf(stderr,
                     "prompt %zu tokens in %.4f s (%.1f tokens/s); generated %zu tokens, decode %.1f tokens/s\n",
                     prompt_ids.size(), prefill_s, prompt_ids.size() / prefill_s, generated.size(),
                     decoded > 0 ? decoded / decode_s : 0.0);
    }
    return Status::Ok();
}

int Main(int argc, char** argv) {
    Options o;
    std::string model_dir, prompt, backend_name = "cpu";
    int threads = 0;
    uint64_t seed = 0;
    o.sampling.temperature = 0.0f;  // greedy unless asked
    CLI::App app{
        "One prompt, one completion, on the CPU backend (or another compiled-in backend). Without "
        "--prompt it reads prompts from stdin, one per line.",
        "uniattn-generate"};
    auto* model_opt = app.add_option("--model", model_dir, "model directory; required");
    auto* prompt_opt = app.add_option("--prompt", prompt, "the prompt (default: read prompts from stdin)");
    app.add_option("--max-tokens", o.max_tokens, "tokens to generate at most")->capture_default_str();
    app.add_option("--temperature", o.sampling.temperature, "sampling temperature (0: greedy)")->capture_default_str();
    app.add_option("--top-p", o.sampling.top_p, "nucleus sampling mass")->capture_default_str();
    app.add_option("--top-k", o.sampling.top_k, "sample among the K most likely tokens (0: all)")
        ->capture_default_str();
    app.add_option("--min-p", o.sampling.min_p, "drop tokens below P times the most likely one's probability")
        ->capture_default_str();
    auto* seed_opt = app.add_option("--seed", seed, "sampling seed");
    app.add_flag("--json", o.json, "print the prompt ids, generated ids and text as one JSON object");
    app.add_flag("--ignore-eos", o.ignore_eos, "generate --max-tokens even past end-of-sequence");
    app.add_flag("--stats", o.stats, "print prefill and decode speed on stderr");
    app.add_option("--threads", threads, "CPU threads (0: all)")->capture_default_str();
    app.add_option("--backend", backend_name, "backend to run on")->capture_default_str();
    if (auto code = ParseCommandLine(app, argc, argv, "uniattn-generate")) return *code;
    if (!model_opt->count()) {
        std::fprintf(stderr,
                     "usage: uniattn-generate --model DIR [--prompt TEXT] [--max-tokens N] [--temperature T]\n"
                     "       [--top-p P] [--top-k K] [--min-p P] [--seed S] [--json] [--ignore-eos] [--stats]\n"
                     "       [--threads N] [--backend cpu]\n");
        return 2;
    }
    if (o.max_tokens < 0) return Fail(InvalidArgument("--max-tokens must be >= 0"));
    if (seed_opt->count()) o.sampling.seed = seed;

    auto backend = MakeBackend(backend_name, threads);
    if (!backend.ok()) return Fail(backend.status());
    auto model = Model::Load(model_dir, backend->get());
    if (!model.ok()) return Fail(model.status());
    if (Status s = o.sampling.Validate((*model)->config.vocab_size); !s.ok()) return Fail(s);
    auto session = Session::Create(model->get(), backend->get());
    if (!session.ok()) return Fail(session.status());

    if (prompt_opt->count()) {
        if (Status s = RunOne(**model, **session, prompt, o); !s.ok()) return Fail(s);
        return 0;
    }
    std::string line;
    std::fprintf(stderr, "> ");
    while (std::getline(std::cin, line)) {
        if (Status s = RunOne(**model, **session, line, o); !s.ok())
            std::fprintf(stderr, "error: %s\n", s.message().c_str());
        std::fprintf(stderr, "> ");
    }
    return 0;
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
