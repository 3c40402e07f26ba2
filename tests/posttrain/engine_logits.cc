// Prints the engine's logits for one token sequence, for tests/posttrain/posttrain_smoke_test.py, which
// compares them with the PyTorch model of tools/posttrain/ on the same checkpoint.
//   posttrain_engine_logits MODEL_DIR TOKENS_FILE OUT_FILE [CHUNK [BACKEND]]
// TOKENS_FILE: raw little-endian int32 token ids. OUT_FILE: raw float32 logits [num_tokens, vocab], one row per
// token. The sequence is appended to one Session in pieces of CHUNK tokens (default or 0: all at once), so a
// CHUNK of 1 exercises the decode path and a CHUNK between exercises chunked prefill across KV blocks.
// BACKEND: cpu (default), cuda (fp16 weights and KV, the CUDA default) or cuda-f32 (fp32 weights and KV);
// bench/peers/hf_logits_check.py uses the cuda ones against transformers on a GPU machine.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/model.h"
#include "model/session.h"

namespace {

int Fail(const std::string& message) {
    std::fprintf(stderr, "posttrain_engine_logits: %s\n", message.c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4 || argc > 6) {
        std::fprintf(stderr, "usage: posttrain_engine_logits MODEL_DIR TOKENS_FILE OUT_FILE [CHUNK [BACKEND]]\n");
        return 2;
    }
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) return Fail(std::string("cannot read ") + argv[2]);
    const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (raw.empty() || raw.size() % sizeof(int32_t) != 0) return Fail(std::string(argv[2]) + ": not int32 tokens");
    std::vector<int32_t> tokens(raw.size() / sizeof(int32_t));
    std::copy(raw.begin(), raw.end(), reinterpret_cast<char*>(tokens.data()));
    const size_t chunk = argc >= 5 && std::atoi(argv[4]) > 0 ? static_cast<size_t>(std::atoi(argv[4])) : tokens.size();
    const std::string backend_name = argc == 6 ? argv[5] : "cpu";

    if (backend_name != "cpu" && backend_name != "cuda" && backend_name != "cuda-f32") {
        return Fail("BACKEND must be cpu, cuda or cuda-f32, got \"" + backend_name + "\"");
    }
    auto made = uniattn::MakeBackend(backend_name == "cpu" ? "cpu" : "cuda", 1,
                                     backend_name == "cuda-f32" ? uniattn::DType::kF32 : uniattn::DType::kF16);
    if (!made.ok()) return Fail(made.status().message());
    std::unique_ptr<uniattn::Backend> backend = std::move(*made);
    auto model = uniattn::Model::Load(argv[1], backend.get(), /*load_tokenizer=*/false);
    if (!model.ok()) return Fail(model.status().message());
    auto session = uniattn::Session::Create(model->get(), backend.get());
    if (!session.ok()) return Fail(session.status().message());

    std::vector<float> all, part;
    for (size_t done = 0; done < tokens.size(); done += chunk) {
        const std::vector<int32_t> piece(tokens.begin() + done, tokens.begin() + std::min(tokens.size(), done + chunk));
        if (uniattn::Status s = (*session)->Append(piece, /*all_logits=*/true, &part); !s.ok())
            return Fail(s.message());
        all.insert(all.end(), part.begin(), part.end());
    }
    std::ofstream out(argv[3], std::ios::binary);
    out.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size() * sizeof(float)));
    if (!out) return Fail(std::string("cannot write ") + argv[3]);
    return 0;
}
