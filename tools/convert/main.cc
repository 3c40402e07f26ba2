// uniattn-convert: model conversions.
//   uniattn-convert import-llama2c --checkpoint FILE.bin --tokenizer tokenizer.model --out DIR [--dtype F32]
#include <cstdio>
#include <string>

#include "model/llama2c_import.h"
#include "util/flags.h"

namespace uniattn {
namespace {

int Usage() {
    std::fprintf(stderr,
                 "usage: uniattn-convert import-llama2c --checkpoint FILE.bin --tokenizer tokenizer.model --out DIR "
                 "[--dtype F32|F16|BF16]\n");
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

int Main(int argc, char** argv) {
    if (argc < 2) return Usage();
    const std::string cmd = argv[1];
    if (cmd == "import-llama2c") return ImportLlama2cMain(argc, argv);
    return Usage();
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
