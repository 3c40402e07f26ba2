#include "model/text_corpus.h"

#include <sstream>

#include "util/file.h"

namespace uniattn {

std::vector<std::string> SplitDocuments(const std::string& text) {
    std::vector<std::string> docs;
    std::istringstream in(text);
    std::string line, cur;
    auto flush = [&] {
        if (!cur.empty()) docs.push_back(cur);
        cur.clear();
    };
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) {
            flush();
            continue;
        }
        if (!cur.empty()) cur += "\n";
        cur += line;
    }
    flush();
    return docs;
}

StatusOr<std::vector<std::vector<int32_t>>> LoadCorpus(const std::string& path, const Tokenizer& tokenizer,
                                                       int max_len) {
    UA_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    std::vector<std::vector<int32_t>> out;
    for (const std::string& doc : SplitDocuments(text)) {
        std::vector<int32_t> ids = tokenizer.Encode(doc, /*add_bos=*/true);
        if (static_cast<int>(ids.size()) > max_len) ids.resize(max_len);
        if (ids.size() >= 2) out.push_back(std::move(ids));
    }
    if (out.empty()) return InvalidArgument(path + ": no documents with at least one token to predict");
    return out;
}

}  // namespace uniattn
