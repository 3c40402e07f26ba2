// uniattn-eval: perplexity of a model on a text file and, with --reference, how far its next-token
// distributions are from a reference model's (greedy-token agreement and mean KL(reference || model)).
//   uniattn-eval --model DIR --text FILE [--reference DIR] [--quantization fp8] [--kv-cache-dtype fp8_e4m3]
//                [--fp8-activations] [--threads N] [--json]
// --quantization / --kv-cache-dtype apply to --model only (engine.quantization / engine.kv_cache_dtype, emulated
// on the CPU): with --reference naming the same directory they measure what fp8 costs. --fp8-activations also
// rounds the activations of fp8 matmuls to e4m3 per token (what the CUDA backend's FP8 tensor-core GEMMs do for
// 3+ rows: prefill and batched decode; every matmul here, since each document is one prefill).
// Protocol (model/text_corpus.h): documents split at blank lines, each BOS + tokens truncated to the
// context length; perplexity = exp(mean NLL over every predicted token of every document).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine_setup.h"
#include "model/model.h"
#include "model/session.h"
#include "model/text_corpus.h"
#include "tools/cli.h"
#include "uniattn/json_io.h"

namespace uniattn {
namespace {

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-eval: %s\n", s.message().c_str());
    return 1;
}

// log-softmax of one row, in double.
void LogSoftmax(const float* logits, int n, std::vector<double>& out) {
    out.resize(n);
    double mx = logits[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
    double z = 0;
    for (int i = 0; i < n; ++i) z += std::exp(logits[i] - mx);
    const double lz = mx + std::log(z);
    for (int i = 0; i < n; ++i) out[i] = logits[i] - lz;
}

int Main(int argc, char** argv) {
    std::string model_dir, text_path, reference_dir, quantization = "none", kv_cache_dtype = "auto";
    int threads = 0;
    bool json = false, fp8_activations = false;
    CLI::App app{
        "Perplexity of a model on a text file and, with --reference, how far its next-token distributions "
        "are from a reference model's (greedy-token agreement and mean KL(reference || model)).",
        "uniattn-eval"};
    auto* model_opt = app.add_option("--model", model_dir, "model directory; required");
    auto* text_opt = app.add_option("--text", text_path, "text FILE (documents split at blank lines); required");
    auto* reference_opt = app.add_option("--reference", reference_dir, "reference model directory");
    app.add_option("--quantization", quantization, "none or fp8: the model's linear weights rounded to e4m3 at load")
        ->capture_default_str();
    app.add_option("--kv-cache-dtype", kv_cache_dtype, "auto or fp8_e4m3: the model's KV cache")->capture_default_str();
    app.add_flag("--fp8-activations", fp8_activations,
                 "fp8 weights' matmuls on activations rounded to e4m3 per token (engine.cuda.fp8_tensor_cores)");
    app.add_option("--threads", threads, "CPU threads (0: all)")->capture_default_str();
    app.add_flag("--json", json, "print the results as one JSON object");
    if (auto code = ParseCommandLine(app, argc, argv, "uniattn-eval")) return *code;
    if (!model_opt->count() || !text_opt->count()) {
        std::fprintf(stderr, "usage: uniattn-eval --model DIR --text FILE [--reference DIR] [--threads N] [--json]\n");
        return 2;
    }
    EngineConfig ec;
    ec.quantization = quantization;
    ec.kv_cache_dtype = kv_cache_dtype;
    auto fp8 = ResolveFp8(ec);
    if (!fp8.ok()) return Fail(fp8.status());
    auto backend = MakeCpuBackend(threads, fp8_activations);
    LoadOptions load;
    load.quantize_fp8 = fp8->weights;
    auto model = Model::Load(model_dir, backend.get(), /*load_tokenizer=*/true, load);
    if (!model.ok()) return Fail(model.status());
    KvScales kv_scales;
    if (fp8->kv) {
        auto s = FindKvScales(**model, backend.get());
        if (!s.ok()) return Fail(s.status());
        kv_scales = std::move(s).value();
    }
    std::unique_ptr<Model> reference;
    if (reference_opt->count()) {
        auto r = Model::Load(reference_dir, backend.get(), /*load_tokenizer=*/false);
        if (!r.ok()) return Fail(r.status());
        reference = std::move(r).value();
        if (reference->config.vocab_size < (*model)->config.vocab_size - 1 ||
            reference->config.vocab_size > (*model)->config.vocab_size + 1) {
            return Fail(InvalidArgument("the reference's vocabulary (" + std::to_string(reference->config.vocab_size) +
                                        ") does not match the model's"));
        }
    }
    const int ctx = (*model)->config.max_position_embeddings;
    auto docs = LoadCorpus(text_path, *(*model)->tokenizer, ctx);
    if (!docs.ok()) return Fail(docs.status());
    // KV caches hold the longest document, not the whole context (131072 tokens for Llama-3.1).
    int max_len = 1;
    for (const auto& doc : *docs) max_len = std::max(max_len, static_cast<int>(doc.size()));
    auto session = Session::Create(model->get(), backend.get(), 16, 256, max_len,
                                   fp8->kv ? DType::kF8E4M3 : backend->KvDType(), fp8->kv ? &kv_scales : nullptr);
    if (!session.ok()) return Fail(session.status());
    std::unique_ptr<Session> ref_session;
    if (reference) {
        auto rs = Session::Create(reference.get(), backend.get(), 16, 256, max_len);
        if (!rs.ok()) return Fail(rs.status());
        ref_session = std::move(rs).value();
    }

    // Compare over the shared part of the vocabularies (UniAttn checkpoints may add a [PAD] token).
    const int vocab = (*model)->config.vocab_size;
    const int shared_vocab = reference ? std::min(vocab, reference->config.vocab_size) : vocab;
    double nll = 0, kl = 0;
    int64_t predicted = 0, agree = 0;
    std::vector<float> logits, ref_logits;
    std::vector<double> lp, ref_lp;
    for (size_t di = 0; di < docs->size(); ++di) {
        const auto& ids = (*docs)[di];
        const std::vector<int32_t> inputs(ids.begin(), ids.end() - 1);
        (*session)->Reset();
        if (Status s = (*session)->Append(inputs, true, &logits); !s.ok()) return Fail(s);
        if (reference) {
            ref_session->Reset();
            if (Status s = ref_session->Append(inputs, true, &ref_logits); !s.ok()) return Fail(s);
        }
        for (size_t t = 0; t < inputs.size(); ++t) {
            const float* row = logits.data() + t * vocab;
            LogSoftmax(row, vocab, lp);
            nll -= lp[ids[t + 1]];
            ++predicted;
            if (reference) {
                const float* rrow = ref_logits.data() + t * reference->config.vocab_size;
                LogSoftmax(rrow, shared_vocab, ref_lp);
                LogSoftmax(row, shared_vocab, lp);
                double k = 0;
                for (int i = 0; i < shared_vocab; ++i) k += std::exp(ref_lp[i]) * (ref_lp[i] - lp[i]);
                kl += k;
                const int a = static_cast<int>(std::max_element(row, row + shared_vocab) - row);
                const int b = static_cast<int>(std::max_element(rrow, rrow + shared_vocab) - rrow);
                agree += a == b ? 1 : 0;
            }
        }
        std::fprintf(stderr, "\reval: document %zu/%zu", di + 1, docs->size());
    }
    std::fprintf(stderr, "\n");
    const double mean_nll = nll / static_cast<double>(predicted);
    if (json) {
        OrderedJson out = OrderedJson::object();
        out["perplexity"] = std::exp(mean_nll);
        out["mean_nll"] = mean_nll;
        out["documents"] = static_cast<int64_t>(docs->size());
        out["predicted_tokens"] = predicted;
        if (reference) {
            out["greedy_agreement"] = static_cast<double>(agree) / predicted;
            out["mean_kl"] = kl / predicted;
        }
        std::printf("%s\n", DumpJson(out).c_str());
    } else {
        std::printf("perplexity: %.4f\nmean_nll: %.6f\ndocuments: %zu\npredicted_tokens: %lld\n", std::exp(mean_nll),
                    mean_nll, docs->size(), static_cast<long long>(predicted));
        if (reference) {
            std::printf("greedy_agreement: %.4f\nmean_kl: %.6f\n", static_cast<double>(agree) / predicted,
                        kl / predicted);
        }
    }
    return 0;
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
