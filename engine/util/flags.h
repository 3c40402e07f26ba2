// A minimal command-line parser for the tools: `--name value`, `--name=value` and boolean `--name`.
// Tools declare every flag, so a typo is an error rather than silently ignored.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

class Flags {
  public:
    // `valued` flags take a value; `booleans` take none.
    Flags(std::set<std::string> valued, std::set<std::string> booleans)
        : valued_(std::move(valued)), booleans_(std::move(booleans)) {}

    Status Parse(int argc, char** argv, int first = 1);
    bool Has(const std::string& name) const { return values_.count(name) > 0; }
    std::string Get(const std::string& name, const std::string& fallback = "") const;
    StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
    StatusOr<double> GetDouble(const std::string& name, double fallback) const;
    const std::vector<std::string>& positional() const { return positional_; }

  private:
    std::set<std::string> valued_, booleans_;
    std::map<std::string, std::string> values_;
    std::vector<std::string> positional_;
};

}  // namespace uniattn
