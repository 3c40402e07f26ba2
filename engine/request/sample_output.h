// One sample's way from drawn tokens to its event stream: EOS and stop token ids, stop strings matched
// across token boundaries (text that could still begin one is held back), incremental detokenization,
// max_tokens, and the kToken / kFinished / kError events that follow. The engine thread owns it; it never
// touches the scheduler (the engine extends or releases the sample's sequence as OnToken says).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sampling/sampler.h"
#include "uniattn/request.h"
#include "uniattn/tokenizer.h"

namespace uniattn {

class SampleOutput {
  public:
    // `request`, `tokenizer` and `eos_ids` (ModelInfo::eos_token_ids) must outlive this object. `wants_text`:
    // detokenize (text is asked for, or stop strings need it). `max_new_tokens` is max_tokens capped by the
    // context.
    SampleOutput(const GenerationRequest& request, const Tokenizer* tokenizer, const std::vector<int32_t>* eos_ids,
                 bool wants_text, int index, int max_new_tokens);

    // Takes the sample's next token and appends its events to `out`: a kToken (unless the token is EOS or a
    // stop token id, which are counted but never emitted), then kFinished when the sample ends with it.
    // Returns true while the sample goes on (the engine then appends the token to its sequence).
    bool OnToken(const SampleResult& result, int cached_tokens, std::vector<RequestEvent>* out);
    // Ends the sample early: kFinished(`reason`), releasing held-back text (kAbort on cancel or shutdown).
    void Finish(FinishReason reason, int cached_tokens, std::vector<RequestEvent>* out);
    // Ends the sample with kError (the forward pass failed).
    void Fail(const Status& error, int cached_tokens, std::vector<RequestEvent>* out);

    bool done() const { return done_; }
    FinishReason finish_reason() const { return finish_reason_; }
    const std::vector<int32_t>& generated() const { return generated_; }

  private:
    RequestEvent EndEvent(RequestEvent::Kind kind, int cached_tokens);

    const GenerationRequest& request_;
    const std::vector<int32_t>* eos_ids_;
    const int index_;
    const int max_new_tokens_;
    std::unique_ptr<IncrementalDetokenizer> detok_;  // when text is wanted or stop strings are set
    std::vector<int32_t> generated_;
    std::string held_;  // detokenized text not yet emitted: it could still begin a stop string
    bool done_ = false;
    FinishReason finish_reason_ = FinishReason::kStop;
};

}  // namespace uniattn
