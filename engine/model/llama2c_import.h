// Imports a llama2.c checkpoint (the legacy format of run.c: seven int32 header fields, then fp32
// weights) as a Hugging Face Llama directory. Every weight value is kept exactly; q_proj/k_proj rows
// are permuted from llama2.c's interleaved RoPE pairs to Hugging Face's half-split convention.
#pragma once

#include <string>

#include "uniattn/dtype.h"
#include "uniattn/status.h"

namespace uniattn {

struct Llama2cImportOptions {
    std::string checkpoint;  // llama2.c .bin
    std::string tokenizer;   // SentencePiece tokenizer.model copied beside the weights
    std::string out_dir;
    DType dtype = DType::kF32;  // F32 keeps every value exactly
};

Status ImportLlama2c(const Llama2cImportOptions& options);

}  // namespace uniattn
