// Small file helpers shared by the model loaders and tools.
#pragma once

#include <string>

#include "uniattn/status.h"

namespace uniattn {

bool FileExists(const std::string& path);
bool IsDirectory(const std::string& path);
StatusOr<std::string> ReadFile(const std::string& path);
Status WriteFile(const std::string& path, const std::string& contents);
Status MakeDirs(const std::string& path);

}  // namespace uniattn
