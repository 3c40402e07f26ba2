// When a request reached its milestones (submitted, first scheduled, first token, each step that gave it
// tokens), and the RequestTimings the engine's observer gets from them. Engine thread only.
#pragma once

#include <chrono>
#include <vector>

#include "uniattn/engine.h"

namespace uniattn {

class RequestClock {
  public:
    using Clock = std::chrono::steady_clock;

    explicit RequestClock(Clock::time_point submitted) : submitted_(submitted) {}

    bool scheduled() const { return scheduled_; }
    // The first time the scheduler runs the request; later calls change nothing.
    void Scheduled(Clock::time_point now) {
        if (scheduled_) return;
        scheduled_ = true;
        first_scheduled_ = now;
    }
    // A step gave the request a token. One inter-token interval per step (every sample of a step shares its
    // `now`), whichever of its samples are still running: with n > 1 the request keeps being measured after
    // sample 0 stops.
    void Token(Clock::time_point now) {
        if (!has_first_token_) {
            has_first_token_ = true;
            first_token_ = now;
        } else if (now != last_token_) {
            inter_token_s_.push_back(Seconds(now - last_token_));
        }
        last_token_ = now;
    }
    // The request ended at `now`; fills the time fields of `t` (the interval list is moved out).
    void Finish(Clock::time_point now, RequestTimings* t) {
        t->queue_s = Seconds((scheduled_ ? first_scheduled_ : now) - submitted_);
        t->ttft_s = has_first_token_ ? Seconds(first_token_ - submitted_) : 0;
        t->prefill_s = has_first_token_ ? Seconds(first_token_ - first_scheduled_) : 0;
        t->decode_s = has_first_token_ ? Seconds(now - first_token_) : 0;
        t->e2e_s = Seconds(now - submitted_);
        t->inter_token_s = std::move(inter_token_s_);
    }

  private:
    static double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

    Clock::time_point submitted_, first_scheduled_, first_token_, last_token_;
    bool scheduled_ = false;
    bool has_first_token_ = false;
    std::vector<double> inter_token_s_;
};

}  // namespace uniattn
