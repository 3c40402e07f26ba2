// What the HTTP and gRPC front ends share: the configuration, the engine (once loaded), the served model's
// description, API-key checks, readiness, draining, metrics, and the set of requests in flight. Thread-safe.
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "server/config.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "uniattn/engine.h"

namespace uniattn::server {

// Compares in time that depends only on the lengths, never on where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Threads for the work a request needs before it can be submitted (parsing its body, rendering chat,
// tokenizing) and for handing memory back afterwards. They run at a lower scheduling priority (nice 10)
// than the I/O threads: when they fill every core with a megabyte prompt, connections, /health included,
// still get the CPU first.
class PreparePool {
  public:
    explicit PreparePool(int num_threads);
    ~PreparePool() { Stop(); }
    // Finishes the queued work, then joins the threads. Call it while the I/O context that the work posts its
    // results to still exists. Idempotent.
    void Stop();
    boost::asio::io_context::executor_type executor() { return ioc_.get_executor(); }

  private:
    boost::asio::io_context ioc_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    std::vector<std::thread> threads_;
};

class ServingState {
  public:
    explicit ServingState(ServerConfig config);

    const ServerConfig& config() const { return config_; }

    // Publishes the loaded engine (not owned; must outlive every front end). Before this, generation
    // endpoints answer 503 "loading".
    void SetEngine(Engine* engine, ResolvedChatTemplate chat_template);
    void SetEngine(Engine* engine, ChatTemplate builtin);  // a built-in template (tests)
    // What model.chat_template resolved to ("auto:<file>", a .jinja path, a built-in name); valid with model().
    const std::string& chat_template_name() const { return chat_template_name_; }
    Engine* engine() const { return engine_.load(std::memory_order_acquire); }
    // Valid once engine() is non-null.
    const ServedModel& model() const { return model_; }
    Metrics* metrics() const { return metrics_.get(); }
    int64_t start_time() const { return start_time_; }

    enum class Readiness { kLoading, kReady, kDraining, kStalled };
    Readiness GetReadiness() const;
    static const char* ReadinessName(Readiness r);

    // Stops admitting: the engine refuses new requests and so do the front ends (503).
    void StartDraining();
    bool draining() const { return draining_.load(); }

    // `authorization` is the Authorization header (or gRPC metadata); true when no keys are configured.
    bool Authorized(std::string_view authorization) const;

    // Submits to the engine, refusing while loading or draining, and remembers the handle so that
    // CancelAll can end it at shutdown.
    StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request);
    // Cancels every request still in flight (drain timeout).
    void CancelAll();

    // Where request bodies are parsed and prompts tokenized (server.prepare_threads): megabytes of text
    // must not hold an HTTP I/O thread, which serves other connections (health probes among them).
    boost::asio::io_context::executor_type prepare_executor() { return prepare_pool_.executor(); }
    void StopPreparing() { prepare_pool_.Stop(); }
    // After a request of `request_bytes`: large ones leave freed heap pages behind (the body, its JSON,
    // millions of token ids); hand them back to the OS so RSS returns to its idle level. The trim (which
    // walks the heap) runs on the preparation pool, never on the caller's (I/O) thread.
    void ReleaseMemoryAfter(size_t request_bytes);

    // Responses being produced (HTTP or gRPC), for the drain to wait on.
    void JobStarted() { jobs_.fetch_add(1); }
    void JobFinished() { jobs_.fetch_sub(1); }
    int jobs() const { return jobs_.load(); }

  private:
    ServerConfig config_;
    std::atomic<Engine*> engine_{nullptr};
    ServedModel model_;
    std::string chat_template_name_;
    std::unique_ptr<Metrics> metrics_;
    std::atomic<bool> draining_{false};
    std::atomic<int> jobs_{0};
    int64_t start_time_ = 0;

    PreparePool prepare_pool_;

    std::mutex handles_mu_;
    std::vector<std::weak_ptr<RequestHandle>> handles_;
};

// Drives one RequestHandle's notifications onto another thread without ever blocking the engine thread.
// The engine calls Notify() (possibly often); at most one wake-up is outstanding until the consumer calls
// Consumed() before draining events. Detach() makes later notifications no-ops (the consumer is gone).
class NotifyHub : public std::enable_shared_from_this<NotifyHub> {
  public:
    explicit NotifyHub(std::function<void()> wake) : wake_(std::move(wake)) {}
    void Notify();
    void Consumed() { pending_.store(false, std::memory_order_release); }
    void Detach();

  private:
    std::mutex mu_;
    std::function<void()> wake_;
    std::atomic<bool> pending_{false};
};

}  // namespace uniattn::server
