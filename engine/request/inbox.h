// The requests' way in and out of the engine thread: the inbox (what callers' threads hand over) and each
// request's handle (its event stream). Callers' threads and the engine thread meet only here.
//
// A handle's states (the engine's request state machine is in engine/README.md):
//   open ──Deliver(events, end=false)──> open        events queue up; notify() after each delivery
//   open ──Deliver(events, end=true)───> ended       no more events will come
//   ended ──every event read──> closed()             Next/TryNext return false from here on
// Cancel() is idempotent and may come in any state: it puts the request id in the inbox once; the engine
// thread ends the request at its next loop (kAbort for every unfinished sample), which ends the stream.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "uniattn/engine.h"

namespace uniattn {

struct PendingRequest;

// What callers' threads share with the engine thread. Handles keep it alive, so Cancel() on a handle that
// outlives its engine is harmless.
struct Inbox {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::unique_ptr<PendingRequest>> submitted;  // accepted by Submit, not yet seen by the engine
    std::vector<uint64_t> cancelled;                         // request ids
    bool stopping = false;
    bool draining = false;
    int num_queued = 0;  // accepted and never scheduled: bounded by max_queued_requests
    int num_live = 0;    // accepted and not yet ended
    uint64_t next_id = 1;
};

class RequestHandleImpl final : public RequestHandle {
  public:
    RequestHandleImpl(uint64_t id, std::shared_ptr<Inbox> inbox) : id_(id), inbox_(std::move(inbox)) {}

    uint64_t id() const override { return id_; }

    bool Next(RequestEvent* event, std::chrono::milliseconds timeout) override {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, timeout, [&] { return !events_.empty() || ended_; });
        return PopLocked(event);
    }

    bool TryNext(RequestEvent* event) override {
        std::lock_guard<std::mutex> lock(mu_);
        return PopLocked(event);
    }

    bool closed() const override {
        std::lock_guard<std::mutex> lock(mu_);
        return ended_ && events_.empty();
    }

    void Cancel() override {
        if (cancel_requested_.exchange(true)) return;
        std::lock_guard<std::mutex> lock(inbox_->mu);
        inbox_->cancelled.push_back(id_);
        inbox_->cv.notify_all();
    }

    void SetNotify(std::function<void()> notify) override {
        std::lock_guard<std::mutex> lock(mu_);
        notify_ = std::move(notify);
    }

    // Engine thread: appends a step's events; `end` closes the stream after them.
    void Deliver(std::vector<RequestEvent>& events, bool end) {
        std::function<void()> notify;
        {
            std::lock_guard<std::mutex> lock(mu_);
            for (RequestEvent& e : events) events_.push_back(std::move(e));
            ended_ = ended_ || end;
            notify = notify_;
        }
        events.clear();
        cv_.notify_all();
        if (notify) notify();
    }

  private:
    bool PopLocked(RequestEvent* event) {
        if (events_.empty()) return false;
        *event = std::move(events_.front());
        events_.pop_front();
        return true;
    }

    const uint64_t id_;
    const std::shared_ptr<Inbox> inbox_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<RequestEvent> events_;
    bool ended_ = false;
    std::function<void()> notify_;
    std::atomic<bool> cancel_requested_{false};
};

// A request accepted by Submit, waiting in the inbox for the engine thread.
struct PendingRequest {
    uint64_t id = 0;
    GenerationRequest request;
    std::shared_ptr<RequestHandleImpl> handle;
    int max_new_tokens = 0;  // max_tokens capped by the context length
    std::chrono::steady_clock::time_point submit_time;
};

}  // namespace uniattn
