// uniattn-convert: model conversions.
//   uniattn-convert import-llama2c --checkpoint FILE.bin --tokenizer tokenizer.model --out DIR [--dtype F32]
//   uniattn-convert unify --model IN --out OUT --group G --begin B --end E [--calib FILE|none]
//                   [--drop-unused-qk] [--samples N] [--seed S] [--ridge R] [--threads N]
//   uniattn-convert fp8 --model IN --out OUT [--method gptq|rtn] [--calib FILE] [--samples N] [--calib-len N]
//                   [--seed S] [--damp D] [--threads N]
#include <cstdio>
#include <string>

#include "model/fp8_quantize.h"
#include "model/llama2c_import.h"
#include "model/model.h"
#include "model/unify.h"
#include "tools/cli.h"

namespace uniattn {
namespace {

int Usage() {
    std::fprintf(stderr,
                 "usage: uniattn-convert import-llama2c --checkpoint FILE.bin --tokenizer tokenizer.model --out DIR "
                 "[--dtype F32|F16|BF16]\n"
                 "       uniattn-convert unify --model IN --out OUT --group G --begin B --end E [--calib FILE|none]\n"
                 "                       [--drop-unused-qk] [--samples N] [--calib-len N] [--seed S] [--ridge R]\n"
                 "                       [--threads N]\n"
                 "  unify writes a UniAttn checkpoint: layers in [B, E) form groups of G; the first of each group\n"
                 "  (the anchor) computes softmax, the others reuse it. Wc is calibrated in closed form on --calib\n"
                 "  text (documents split at blank lines), on sequences sampled from IN when --calib is omitted,\n"
                 "  or left zero with --calib none.\n"
                 "       uniattn-convert fp8 --model IN --out OUT [--method gptq|rtn] [--calib FILE] [--samples N]\n"
                 "                       [--calib-len N] [--seed S] [--damp D] [--threads N]\n"
                 "  fp8 writes an FP8 checkpoint (compressed-tensors: e4m3 weights, a scale per output channel)\n"
                 "  of a 16/32-bit model; gptq spreads rounding errors over calibration activations.\n");
    return 2;
}

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-convert: %s\n", s.message().c_str());
    return 1;
}

int ImportLlama2cMain(int argc, char** argv) {
    Llama2cImportOptions o;
    std::string dtype_name = "F32";
    CLI::App app{"Imports a llama2.c checkpoint (and its SentencePiece tokenizer) as a model directory.",
                 "uniattn-convert import-llama2c"};
    auto* checkpoint = app.add_option("--checkpoint", o.checkpoint, "llama2.c checkpoint (FILE.bin); required");
    app.add_option("--tokenizer", o.tokenizer, "SentencePiece tokenizer.model to copy into the model directory");
    auto* out = app.add_option("--out", o.out_dir, "output model directory; required");
    app.add_option("--dtype", dtype_name, "weight dtype: F32, F16 or BF16")->capture_default_str();
    if (auto code = ParseCommandLine(app, argc - 1, argv + 1, "uniattn-convert")) return *code;
    if (!checkpoint->count() || !out->count()) return Usage();
    auto dtype = ParseDType(dtype_name);
    if (!dtype.ok()) return Fail(dtype.status());
    o.dtype = *dtype;
    if (Status s = ImportLlama2c(o); !s.ok()) return Fail(s);
    std::fprintf(stderr, "wrote %s\n", o.out_dir.c_str());
    return 0;
}

int UnifyMain(int argc, char** argv) {
    UnifyOptions o;
    int64_t seed = static_cast<int64_t>(o.seed);
    CLI::App app{
        "Writes a UniAttn checkpoint: layers in [B, E) form groups of G; the first of each group (the "
        "anchor) computes softmax, the others reuse it.",
        "uniattn-convert unify"};
    app.footer(
        "Wc is calibrated in closed form on --calib text (documents split at blank lines), on sequences sampled "
        "from IN when --calib is omitted, or left zero with --calib none.");
    auto* model = app.add_option("--model", o.model_dir, "input model directory (IN); required");
    auto* out = app.add_option("--out", o.out_dir, "output model directory (OUT); required");
    auto* group = app.add_option("--group", o.group, "layers per group (G); required");
    auto* begin = app.add_option("--begin", o.begin, "first layer of the unified range (B); required");
    auto* end = app.add_option("--end", o.end, "end of the unified range, exclusive (E); required");
    app.add_option("--calib", o.calib, "calibration text FILE, or none");
    app.add_flag("--drop-unused-qk", o.drop_unused_qk,
                 "drop the reuse layers' Q/K projections (with their biases and q/k norms)");
    app.add_option("--samples", o.calib_samples, "calibration sequences")->capture_default_str();
    app.add_option("--calib-len", o.calib_len, "tokens per calibration sequence (0: the model's context, at most 2048)")
        ->capture_default_str();
    app.add_option("--seed", seed, "seed for sampled calibration sequences")->capture_default_str();
    app.add_option("--ridge", o.ridge, "ridge regularisation of the closed-form fit")->capture_default_str();
    app.add_option("--threads", o.num_threads, "CPU threads (0: all)")->capture_default_str();
    if (auto code = ParseCommandLine(app, argc - 1, argv + 1, "uniattn-convert")) return *code;
    for (const CLI::Option* required : {model, out, group, begin, end}) {
        if (!required->count()) {
            std::fprintf(stderr, "uniattn-convert unify: %s is required\n", required->get_name().c_str());
            return Usage();
        }
    }
    if (o.model_dir == o.out_dir) return Fail(InvalidArgument("--out must differ from --model"));
    o.seed = static_cast<uint64_t>(seed);
    if (o.calib_samples < 1) return Fail(InvalidArgument("--samples must be >= 1"));
    if (o.ridge < 0) return Fail(InvalidArgument("--ridge must be >= 0"));
    o.progress = [](const std::string& line) { std::fprintf(stderr, "unify: %s\n", line.c_str()); };
    auto report = Unify(o);
    if (!report.ok()) return Fail(report.status());
    auto cfg = Model::LoadConfig(o.out_dir);
    if (!cfg.ok()) return Fail(cfg.status());
    const int64_t unified = cfg->KvBytesPerToken(2), dense = cfg->DenseKvBytesPerToken(2);
    std::printf(
        "reuse layers: %zu of %d\nkv_bytes_per_token_fp16: %lld\nkv_bytes_per_token_fp16_dense: %lld\n"
        "kv_saving: %.2f%%\n",
        report->reuse_layers.size(), cfg->num_layers, static_cast<long long>(unified), static_cast<long long>(dense),
        100.0 * (1.0 - static_cast<double>(unified) / static_cast<double>(dense)));
    return 0;
}

int Fp8Main(int argc, char** argv) {
    Fp8QuantizeOptions o;
    int64_t seed = static_cast<int64_t>(o.seed);
    CLI::App app{
        "Writes an FP8 checkpoint (compressed-tensors layout: F8_E4M3 weights with one F32 scale per output "
        "channel, lm_head and embedding kept) of a 16/32-bit model.",
        "uniattn-convert fp8"};
    auto* model = app.add_option("--model", o.model_dir, "input model directory (IN); required");
    auto* out = app.add_option("--out", o.out_dir, "output model directory (OUT); required");
    app.add_option("--method", o.method,
                   "rtn: round to nearest (what engine.quantization=fp8 does at load); gptq: error feedback over "
                   "calibration activations")
        ->capture_default_str();
    app.add_option("--calib", o.calib, "gptq calibration text FILE (default: sequences sampled from IN)");
    app.add_option("--samples", o.calib_samples, "sampled calibration sequences")->capture_default_str();
    app.add_option("--calib-len", o.calib_len, "tokens per sampled sequence")->capture_default_str();
    app.add_option("--seed", seed, "seed for sampled calibration sequences")->capture_default_str();
    app.add_option("--damp", o.damp, "gptq: added to the Gram matrix diagonal, relative to its mean")
        ->capture_default_str();
    bool no_act_order = false;
    app.add_flag("--no-act-order", no_act_order, "gptq: round the columns in their stored order");
    app.add_option("--threads", o.num_threads, "CPU threads (0: all)")->capture_default_str();
    if (auto code = ParseCommandLine(app, argc - 1, argv + 1, "uniattn-convert")) return *code;
    if (!model->count() || !out->count()) return Usage();
    o.act_order = !no_act_order;
    if (o.calib_samples < 1) return Fail(InvalidArgument("--samples must be >= 1"));
    if (!(o.damp >= 0)) return Fail(InvalidArgument("--damp must be >= 0"));
    o.seed = static_cast<uint64_t>(seed);
    o.progress = [](const std::string& line) { std::fprintf(stderr, "fp8: %s\n", line.c_str()); };
    auto report = QuantizeFp8(o);
    if (!report.ok()) return Fail(report.status());
    std::printf("fp8_tensors: %d\nmethod: %s\ncalib_tokens: %lld\n", report->num_tensors, o.method.c_str(),
                static_cast<long long>(report->calib_tokens));
    if (report->num_measured > 0) {
        std::printf("relative_output_error_rtn: %.6g\nrelative_output_error: %.6g\n", report->rtn_output_error,
                    report->output_error);
    }
    return 0;
}

int Main(int argc, char** argv) {
    if (argc < 2) return Usage();
    const std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h") {
        Usage();
        return 0;
    }
    if (cmd == "import-llama2c") return ImportLlama2cMain(argc, argv);
    if (cmd == "unify") return UnifyMain(argc, argv);
    if (cmd == "fp8") return Fp8Main(argc, argv);
    return Usage();
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
