// `uniattn-bench serve`: the serving benchmark (vLLM benchmark_serving's method) against any
// OpenAI-compatible endpoint: ours, llama.cpp's llama-server, vLLM. bench/README.md documents the flags.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "bench/serve_load.h"
#include "bench/serve_stats.h"

namespace uniattn::bench {

// argv[0] is "serve" (the subcommand); returns the process exit code: 0 when at least one request
// succeeded, 1 when none did, 2 on bad arguments or an unreachable target.
int ServeBenchMain(int argc, char** argv);

// The human-readable table (stdout) and the JSON document (--json) of one run.
std::string FormatReport(const LoadOptions& options, const Report& report, const std::string& label);
nlohmann::json ReportJson(const LoadOptions& options, const Report& report, const LoadResult& result);

}  // namespace uniattn::bench
