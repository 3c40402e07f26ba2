#include "model/session.h"

#include <algorithm>

namespace uniattn {

StatusOr<std::unique_ptr<Session>> Session::Create(const Model* model, Backend* backend, int block_size, int max_chunk,
                                                   int max_tokens, std::optional<DType> kv_dtype,
                                                   const KvScales* kv_scales) {
    std::unique_ptr<Session> s(new Session(model, backend));
    s->block_size_ = block_size;
    s->max_chunk_ = std::max(1, max_chunk);
    s->capacity_ = max_tokens > 0 ? max_tokens : model->config.max_position_embeddings;
    const int num_blocks = (s->capacity_ + block_size - 1) / block_size;
    UA_ASSIGN_OR_RETURN(s->kv_, KvCache::Create(backend, model->config, block_size, num_blocks,
                                                kv_dtype.value_or(backend->KvDType()), kv_scales));
    for (int i = num_blocks - 1; i >= 0; --i) s->blocks_.push_back(i);
    return s;
}

Status Session::Append(const std::vector<int32_t>& tokens, bool all_logits, std::vector<float>* logits) {
    const int vocab = model_->config.vocab_size;
    if (length_ + static_cast<int>(tokens.size()) > capacity_) {
        return FailedPrecondition("sequence of " + std::to_string(length_ + tokens.size()) +
                                  " tokens exceeds the context length " + std::to_string(capacity_));
    }
    for (int32_t t : tokens) {
        if (t < 0 || t >= vocab) return InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary");
    }
    logits->clear();
    size_t done = 0;
    while (done < tokens.size()) {
        const size_t n = std::min<size_t>(max_chunk_, tokens.size() - done);
        const std::vector<int32_t> chunk(tokens.begin() + done, tokens.begin() + done + n);
        const bool last = done + n == tokens.size();
        ForwardInput in;
        in.AddSequence(chunk, length_, blocks_, block_size_, false);
        if (all_logits) {
            for (size_t i = 0; i < n; ++i) in.logits_rows.push_back(static_cast<int32_t>(i));
        } else if (last) {
            in.logits_rows.push_back(static_cast<int32_t>(n - 1));
        }
        in.Finish();
        const size_t before = logits->size();
        logits->resize(before + in.logits_rows.size() * vocab);
        UA_RETURN_IF_ERROR(runner_.Forward(in, *kv_, logits->data() + before));
        length_ += static_cast<int>(n);
        done += n;
    }
    return Status::Ok();
}

}  // namespace uniattn
