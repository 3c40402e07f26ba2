#include "util/flags.h"

#include <cerrno>
#include <cstdlib>

namespace uniattn {

Status Flags::Parse(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg.rfind("--", 0) != 0) {
            positional_.push_back(arg);
            continue;
        }
        std::string name = arg.substr(2), value;
        bool has_value = false;
        if (auto eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            has_value = true;
        }
        if (booleans_.count(name)) {
            if (has_value) return InvalidArgument("--" + name + " takes no value");
            values_[name] = "1";
        } else if (valued_.count(name)) {
            if (!has_value) {
                if (i + 1 >= argc) return InvalidArgument("--" + name + " needs a value");
                value = argv[++i];
            }
            values_[name] = value;
        } else {
            return InvalidArgument("unknown flag --" + name);
        }
    }
    return Status::Ok();
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
}

StatusOr<int64_t> Flags::GetInt(const std::string& name, int64_t fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (errno != 0 || end == it->second.c_str() || *end != '\0') {
        return InvalidArgument("--" + name + " expects an integer, got \"" + it->second + "\"");
    }
    return static_cast<int64_t>(v);
}

StatusOr<double> Flags::GetDouble(const std::string& name, double fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (errno != 0 || end == it->second.c_str() || *end != '\0') {
        return InvalidArgument("--" + name + " expects a number, got \"" + it->second + "\"");
    }
    return v;
}

}  // namespace uniattn
