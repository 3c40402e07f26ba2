#include "uniattn/json_io.h"

namespace uniattn {

StatusOr<nlohmann::json> ParseJsonFile(std::string_view text, std::string_view what) {
    nlohmann::json j;
    if (auto error = ParseJsonBounded(text, kMaxJsonFileDepth, j)) {
        if (error->kind == JsonParseError::Kind::kNumberOverflow) {
            // Refused here rather than read as infinity: it could not be written back as JSON.
            const std::string where = error->path.empty() ? "the document" : "\"" + error->path + "\"";
            return InvalidArgument(std::string(what) + ": " + where + " must be a finite number (" + error->detail +
                                   ")");
        }
        return InvalidArgument(std::string(what) + ": invalid JSON: " + error->detail);
    }
    return j;
}

}  // namespace uniattn
