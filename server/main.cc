// uniattn-serve: the OpenAI-compatible HTTP server and the gRPC server in front of one engine.
//   uniattn-serve --config FILE [--port N] [--grpc-port N] [--host ADDR] [--model DIR] [--set key=value ...]
//                 [--print-config]
// Start-up: parse and validate the config (any error names the key and exits 2), bind both ports and print
//   listening http=HOST:PORT grpc=HOST:PORT
// then load the model (/ready answers 503 meanwhile), print `ready model=NAME ...` and serve. SIGTERM or
// SIGINT: readiness goes 503, new requests are refused, in-flight requests finish (up to
// server.drain_timeout_s, then they are aborted), and the process exits 0. A second signal skips the wait.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include "server/chat_template.h"
#include "server/config.h"
#include "server/grpc_server.h"
#include "server/http_server.h"
#include "server/serving.h"
#include "uniattn/engine.h"

namespace uniattn::server {
namespace {

namespace net = boost::asio;

class SignalWaiter {
  public:
    void Signal(int signo) {
        std::lock_guard<std::mutex> lock(mu_);
        ++count_;
        last_ = signo;
        cv_.notify_all();
    }
    void Wait() {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return count_ >= 1; });
    }
    int count() {
        std::lock_guard<std::mutex> lock(mu_);
        return count_;
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    int count_ = 0;
    int last_ = 0;
};

void ArmSignals(net::signal_set& signals, SignalWaiter& waiter) {
    signals.async_wait([&signals, &waiter](const boost::system::error_code& ec, int signo) {
        if (ec) return;
        waiter.Signal(signo);
        ArmSignals(signals, waiter);
    });
}

// Parsed once at start-up: a template that does not parse stops the server with the file and line.
StatusOr<ResolvedChatTemplate> LoadChatTemplate(const ServerConfig& c) {
    std::string detail;
    UA_ASSIGN_OR_RETURN(ResolvedChatTemplate t, ResolveChatTemplate(c.chat_template, c.engine.model_dir, &detail));
    spdlog::info("chat template: {} ({})", t.name, detail);
    return t;
}

int Run(int argc, char** argv) {
    CLI::App app{"uniattn-serve: OpenAI-compatible HTTP and gRPC serving for UniAttn models"};
    std::string config_path;
    std::optional<int> port, grpc_port;
    std::optional<std::string> host, model;
    std::vector<std::string> sets;
    bool print_config = false;
    app.add_option("--config", config_path, "YAML config file (see config/default.yaml)");
    app.add_option("--port", port, "HTTP port (server.http_port; 0 = ephemeral)");
    app.add_option("--grpc-port", grpc_port, "gRPC port (server.grpc_port; 0 = ephemeral, -1 = off)");
    app.add_option("--host", host, "address to bind (server.host)");
    app.add_option("--model", model, "model directory (model.path)");
    app.add_option("--set", sets, "override any config key: --set engine.max_num_seqs=8 (repeatable)");
    app.add_flag("--print-config", print_config, "print the effective configuration and exit");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    std::vector<ConfigOverride> overrides;
    for (const std::string& s : sets) {
        auto o = ParseOverride(s);
        if (!o.ok()) {
            std::fprintf(stderr, "uniattn-serve: %s\n", o.status().message().c_str());
            return 2;
        }
        overrides.push_back(*o);
    }
    if (port) overrides.push_back({"server.http_port", std::to_string(*port)});
    if (grpc_port) overrides.push_back({"server.grpc_port", std::to_string(*grpc_port)});
    if (host) overrides.push_back({"server.host", "\"" + *host + "\""});
    if (model) overrides.push_back({"model.path", "\"" + *model + "\""});
    auto loaded = LoadConfig(config_path, overrides);
    if (!loaded.ok()) {
        std::fprintf(stderr, "uniattn-serve: %s\n", loaded.status().message().c_str());
        return 2;
    }
    ServerConfig config = std::move(loaded).value();
    if (print_config) {
        std::fputs(ConfigToYaml(config).c_str(), stdout);
        return 0;
    }

    spdlog::set_default_logger(spdlog::stderr_color_mt("uniattn"));
    spdlog::set_level(spdlog::level::from_str(config.log_level));
    std::signal(SIGPIPE, SIG_IGN);

    auto chat_template = LoadChatTemplate(config);
    if (!chat_template.ok()) {
        std::fprintf(stderr, "uniattn-serve: %s\n", chat_template.status().message().c_str());
        return 2;
    }

    ServingState state(config);
    std::unique_ptr<Engine> engine;
    auto ioc = std::make_unique<net::io_context>(config.http_threads);
    auto work = net::make_work_guard(*ioc);
    SignalWaiter waiter;
    // Destroyed before the io_context below (its service dies with it; ASan+UBSan caught the destructor
    // calling into the destroyed service).
    auto signals = std::make_unique<net::signal_set>(*ioc, SIGINT, SIGTERM);
    ArmSignals(*signals, waiter);

    auto http = std::make_unique<HttpServer>(state, *ioc);
    if (Status s = http->Start(config.host, config.http_port); !s.ok()) {
        std::fprintf(stderr, "uniattn-serve: %s\n", s.message().c_str());
        return 1;
    }
    std::unique_ptr<GrpcServer> grpc;
    if (config.grpc_port >= 0) {
        grpc = std::make_unique<GrpcServer>(state, *ioc);
        if (Status s = grpc->Start(config.host, config.grpc_port); !s.ok()) {
            std::fprintf(stderr, "uniattn-serve: %s\n", s.message().c_str());
            return 1;
        }
    }
    std::vector<std::thread> threads;
    for (int i = 0; i < config.http_threads; ++i) threads.emplace_back([&ioc] { ioc->run(); });
    auto stop_io = [&] {
        signals->cancel();
        work.reset();
        ioc->stop();
        for (auto& t : threads) t.join();
        threads.clear();
    };

    const std::string grpc_addr = grpc ? config.host + ":" + std::to_string(grpc->port()) : std::string("off");
    std::printf("listening http=%s:%d grpc=%s\n", config.host.c_str(), http->port(), grpc_addr.c_str());
    std::fflush(stdout);
    spdlog::info("HTTP on {}:{}, gRPC on {}; loading {}", config.host, http->port(), grpc_addr,
                 config.engine.model_dir);

    const auto load_start = std::chrono::steady_clock::now();
    auto created = Engine::Create(config.engine);
    if (!created.ok()) {
        spdlog::error("cannot load the model: {}", created.status().message());
        std::fprintf(stderr, "uniattn-serve: %s\n", created.status().message().c_str());
        if (grpc) grpc->Shutdown(std::chrono::milliseconds(0));
        stop_io();
        return 1;
    }
    engine = std::move(created).value();
    // The engine serves a directory without a tokenizer file as token ids only (test models); the OpenAI API
    // needs text both ways, so a missing tokenizer would answer every text prompt with an empty one.
    const std::string& dir = config.engine.model_dir;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(dir + "/tokenizer.json", ec) &&
        !std::filesystem::is_regular_file(dir + "/tokenizer.model", ec)) {
        spdlog::error("cannot load the model: {} has no tokenizer.json or tokenizer.model", dir);
        std::fprintf(stderr,
                     "uniattn-serve: %s/tokenizer.model: not found (nor tokenizer.json); text prompts, chat and text "
                     "output need the model's tokenizer\n",
                     dir.c_str());
        engine.reset();
        if (grpc) grpc->Shutdown(std::chrono::milliseconds(0));
        stop_io();
        return 1;
    }
    const std::string chat_template_name = chat_template->name;
    state.SetEngine(engine.get(), std::move(chat_template).value());
    if (grpc) grpc->SetServing(true);
    const ModelInfo& info = engine->model_info();
    std::printf("ready model=%s max_model_len=%d kv_bytes_per_token=%lld kv_bytes_per_token_dense=%lld\n",
                info.name.c_str(), info.max_model_len, static_cast<long long>(info.kv_bytes_per_token),
                static_cast<long long>(info.kv_bytes_per_token_dense));
    std::fflush(stdout);
    spdlog::info("ready: model {} ({} backend, weights / KV {}, max_model_len {}, chat template {}) loaded in {:.2f}s",
                 info.name, info.backend, info.dtype, info.max_model_len, chat_template_name,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());
    {
        std::string eos;
        for (int32_t id : info.eos_token_ids) eos += (eos.empty() ? "" : ", ") + std::to_string(id);
        SamplingDefaults defaults = info.sampling_defaults;
        defaults.Override(config.override_generation_config);
        spdlog::info("generation: eos ids [{}], request defaults {}", eos, defaults.ToString());
    }

    waiter.Wait();

    // Drain: readiness 503, admit nothing new, let what runs finish.
    spdlog::info("signal received: draining (up to {:.1f}s)", config.drain_timeout_s);
    state.StartDraining();
    if (grpc) grpc->SetServing(false);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                               std::chrono::duration<double>(config.drain_timeout_s));
    auto busy = [&] { return state.jobs() > 0 || !engine->Idle(); };
    while (busy() && std::chrono::steady_clock::now() < deadline && waiter.count() < 2) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (busy()) {
        spdlog::warn("drain {}: aborting {} request(s) still running",
                     waiter.count() >= 2 ? "skipped by a second signal" : "timed out", state.jobs());
        state.CancelAll();
        const auto abort_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        while (busy() && std::chrono::steady_clock::now() < abort_deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    http->StopAccepting();
    if (grpc) grpc->Shutdown(std::chrono::milliseconds(500));
    state.StopPreparing();  // their results post to the I/O context: before it stops
    stop_io();
    http.reset();
    grpc.reset();
    signals.reset();
    ioc.reset();  // ends the remaining connections (and cancels their requests) while the engine still exists
    engine.reset();
    spdlog::info("stopped");
    return 0;
}

}  // namespace
}  // namespace uniattn::server

int main(int argc, char** argv) { return uniattn::server::Run(argc, argv); }
