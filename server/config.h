// uniattn-serve's configuration: a YAML file, then command-line overrides (`--set key=value`, --port,
// --grpc-port, --model). Every key is declared in one table (config.cc), so an unknown key, a value of the
// wrong type or an impossible value stops start-up with a message naming the key. server/README.md
// documents every key.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/engine.h"
#include "uniattn/generation_config.h"
#include "uniattn/status.h"

namespace uniattn::server {

struct ServerConfig {
    EngineConfig engine;  // model.path, model.name, model.max_model_len and every engine.* key

    // model.chat_template: auto (the model's own Jinja template), plain|llama-2|llama-3|chatml|mistral|none, or
    // the path of a .jinja file.
    std::string chat_template = "auto";
    // model.override_generation_config.{temperature,top_p,top_k,min_p,repetition_penalty}: request defaults
    // that replace generation_config.json's (model.generation_config selects that file: engine.generation_config).
    SamplingDefaults override_generation_config;

    std::string host = "127.0.0.1";
    int http_port = 8000;   // 0 = ephemeral
    int grpc_port = 50051;  // 0 = ephemeral, -1 = no gRPC server
    int http_threads = 2;
    int prepare_threads = 2;            // parse request bodies and tokenize prompts, off the HTTP I/O threads
    std::vector<std::string> api_keys;  // empty: no key required
    std::vector<std::string> cors_allowed_origins;  // empty: no CORS headers; "*" allows any origin
    int64_t max_body_bytes = 8 << 20;
    // prompts x n in one request (completions take a list of prompts); 0 = engine.max_num_seqs, so that one
    // request never asks for more sequences than a step runs.
    int max_sequences_per_request = 0;
    double request_timeout_s = 60;  // reading one request, including a keep-alive connection's idle wait
    double drain_timeout_s = 30;    // SIGTERM: how long in-flight requests may run before they are aborted
    double ready_max_stall_s = 10;  // /ready fails when work is pending and no step ran for this long

    std::string log_level = "info";  // trace|debug|info|warn|error|off
    bool access_log = false;         // one line per HTTP request at info level
};

// One `--set key=value` override: `value` is parsed as YAML (so `[a, b]` is a list).
struct ConfigOverride {
    std::string key;
    std::string value;
};

// Parses "key=value".
StatusOr<ConfigOverride> ParseOverride(std::string_view text);

// Loads `path` (empty: defaults only), then applies `overrides` in order, then validates. Messages name
// the key: "engine.block_size: expected an integer, got 'abc'".
StatusOr<ServerConfig> LoadConfig(const std::string& path, const std::vector<ConfigOverride>& overrides);

// Parses YAML text; `what` names the source in messages (for tests and --set).
StatusOr<ServerConfig> ParseConfig(std::string_view yaml_text, std::string_view what,
                                   const std::vector<ConfigOverride>& overrides);

// Every key, dotted, in declaration order (for docs and tests).
std::vector<std::string> ConfigKeys();

// "8MiB", "512k", "1G", "1048576" -> bytes (binary units; "KB"/"MB"/"GB" are decimal).
StatusOr<int64_t> ParseByteSize(std::string_view text);

// The effective configuration as YAML, for --print-config.
std::string ConfigToYaml(const ServerConfig& config);

}  // namespace uniattn::server
