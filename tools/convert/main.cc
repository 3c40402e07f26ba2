// uniattn-convert: model conversions.
//   uniattn-convert import-llama2c --checkpoint FILE.bin --tokenizer tokenizer.model --out DIR [--dtype F32]
//   uniattn-convert unify --model IN --out OUT --group G --begin B --end E [--calib FILE|none]
//                   [--drop-unused-qk] [--samples N] [--seed S] [--ridge R] [--threads N]
#include <cstdio>
#include <string>

#include "model/llama2c_import.h"
#include "model/model.h"
#include "model/unify.h"
#include "util/flags.h"

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
                 "  or left zero with --calib none.\n");
    return 2;
}

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-convert: %s\n", s.message().c_str());
    return 1;
}

int ImportLlama2cMain(int argc, char** argv) {
    Flags flags({"checkpoint", "tokenizer", "out", "dtype"}, {});
    if (Status s = flags.Parse(argc, argv, 2); !s.ok()) return Fail(s);
    if (!flags.Has("checkpoint") || !flags.Has("out")) return Usage();
    Llama2cImportOptions o;
    o.checkpoint = flags.Get("checkpoint");
    o.tokenizer = flags.Get("tokenizer");
    o.out_dir = flags.Get("out");
    auto dtype = ParseDType(flags.Get("dtype", "F32"));
    if (!dtype.ok()) return Fail(dtype.status());
    o.dtype = *dtype;
    if (Status s = ImportLlama2c(o); !s.ok()) return Fail(s);
    std::fprintf(stderr, "wrote %s\n", o.out_dir.c_str());
    return 0;
}

int UnifyMain(int argc, char** argv) {
    Flags flags({"model", "out", "group", "begin", "end", "calib", "samples", "calib-len", "seed", "ridge", "threads"},
                {"drop-unused-qk"});
    if (Status s = flags.Parse(argc, argv, 2); !s.ok()) return Fail(s);
    for (const char* required : {"model", "out", "group", "begin", "end"}) {
        if (!flags.Has(required)) {
            std::fprintf(stderr, "uniattn-convert unify: --%s is required\n", required);
            return Usage();
        }
    }
    UnifyOptions o;
    o.model_dir = flags.Get("model");
    o.out_dir = flags.Get("out");
    if (o.model_dir == o.out_dir) return Fail(InvalidArgument("--out must differ from --model"));
    o.calib = flags.Get("calib");
    o.drop_unused_qk = flags.Has("drop-unused-qk");
    auto g = flags.GetInt("group", 1);
    auto b = flags.GetInt("begin", 0);
    auto e = flags.GetInt("end", 0);
    auto samples = flags.GetInt("samples", o.calib_samples);
    auto calib_len = flags.GetInt("calib-len", 0);
    auto seed = flags.GetInt("seed", static_cast<int64_t>(o.seed));
    auto ridge = flags.GetDouble("ridge", o.ridge);
    auto threads = flags.GetInt("threads", 0);
    for (const Status& s : {g.status(), b.status(), e.status(), samples.status(), calib_len.status(), seed.status(),
                            ridge.status(), threads.status()}) {
        if (!s.ok()) return Fail(s);
    }
    o.group = static_cast<int>(*g);
    o.begin = static_cast<int>(*b);
    o.end = static_cast<int>(*e);
    o.calib_samples = static_cast<int>(*samples);
    o.calib_len = static_cast<int>(*calib_len);
    o.seed = static_cast<uint64_t>(*seed);
    o.ridge = *ridge;
    o.num_threads = static_cast<int>(*threads);
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

int Main(int argc, char** argv) {
    if (argc < 2) return Usage();
    const std::string cmd = argv[1];
    if (cmd == "import-llama2c") return ImportLlama2cMain(argc, argv);
    if (cmd == "unify") return UnifyMain(argc, argv);
    return Usage();
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
