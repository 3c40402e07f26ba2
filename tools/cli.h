// Command lines of the tools and benchmarks (CLI11, as uniattn-serve). One convention for all of them:
// --help prints the help on stdout and exits 0; an unknown flag, a missing value or a value of the wrong
// type prints "PROGRAM: message" (naming the flag) on stderr and exits 1. Tools print their usage line and
// exit 2 themselves when a required flag is absent.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>

namespace uniattn {

// Parses argv into app's options. nullopt: go on; otherwise the code the program exits with.
inline std::optional<int> ParseCommandLine(CLI::App& app, int argc, const char* const* argv, const char* program) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        std::fprintf(stderr, "%s: %s\n", program, e.what());
        return 1;
    }
    return std::nullopt;
}

}  // namespace uniattn
