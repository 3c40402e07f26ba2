#include "bench/serve_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace uniattn::bench {

double Percentile(std::vector<double> values, double p) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(rank));
    const size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (rank - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

Summary Summarize(const std::vector<double>& values) {
    Summary s;
    s.count = static_cast<int64_t>(values.size());
    if (values.empty()) return s;
    s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
    s.p50 = Percentile(values, 50);
    s.p90 = Percentile(values, 90);
    s.p99 = Percentile(values, 99);
    const auto [mn, mx] = std::minmax_element(values.begin(), values.end());
    s.min = *mn;
    s.max = *mx;
    return s;
}

double Rng::Uniform() {
    // 53 random bits -> a double in [0, 1).
    return static_cast<double>(engine_() >> 11) * (1.0 / 9007199254740992.0);
}

int64_t Rng::UniformInt(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    if (span == 0) return static_cast<int64_t>(engine_());  // the whole 64-bit range
    // Rejection sampling: no modulo bias.
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % span;
    uint64_t x;
    do {
        x = engine_();
    } while (x >= limit);
    return lo + static_cast<int64_t>(x % span);
}

double Rng::Exponential(double rate) { return -std::log1p(-Uniform()) / rate; }

double ArrivalSchedule::Next() {
    if (first_) {
        first_ = false;
        return t_;
    }
    if (!(rate_ > 0) || std::isinf(rate_)) return t_;
    t_ += rng_.Exponential(rate_);
    return t_;
}

int SampleLength(int len, double range_ratio, Rng& rng) {
    if (range_ratio <= 0) return std::max(len, 1);
    const int64_t lo = std::max<int64_t>(1, static_cast<int64_t>(std::floor(len * (1.0 - range_ratio))));
    const int64_t hi = std::max<int64_t>(lo, static_cast<int64_t>(std::ceil(len * (1.0 + range_ratio))));
    return static_cast<int>(rng.UniformInt(lo, hi));
}

namespace {

// Common words that are single pieces ("▁word") in the Llama SentencePiece vocabulary.
constexpr const char* kWords[] = {
    "the",  "and",  "a",      "to",     "was",    "he",    "she",    "it",   "of",    "in",    "day",   "dog",
    "cat",  "big",  "little", "girl",   "boy",    "happy", "sad",    "red",  "blue",  "green", "tree",  "house",
    "park", "ball", "play",   "played", "friend", "mom",   "man",    "sun",  "water", "bird",  "fish",  "car",
    "book", "food", "good",   "new",    "old",    "small", "long",   "time", "one",   "two",   "three", "went",
    "saw",  "said", "looked", "found",  "made",   "came",  "ran",    "jump", "walk",  "very",  "with",  "they",
    "we",   "you",  "her",    "his",    "on",     "at",    "for",    "from", "up",    "down",  "out",   "into",
    "then", "when", "there",  "so",     "but",    "not",   "all",    "some", "many",  "nice",  "fun",   "sky",
    "box",  "road", "milk",   "bed",    "door",   "room",  "school", "home", "night", "light", "star",  "moon",
};
constexpr int kNumWords = static_cast<int>(sizeof(kWords) / sizeof(kWords[0]));

}  // namespace

std::string RandomWordsPrompt(int num_words, Rng& rng) {
    std::string out;
    for (int i = 0; i < num_words; ++i) {
        if (i > 0) out += ' ';
        out += kWords[rng.UniformInt(0, kNumWords - 1)];
    }
    return out;
}

void SseParser::Feed(std::string_view bytes, std::vector<std::string>* events) {
    for (const char c : bytes) {
        if (c == '\n' && last_was_cr_) {  // the second half of "\r\n"
            last_was_cr_ = false;
            continue;
        }
        last_was_cr_ = c == '\r';
        if (c == '\n' || c == '\r') {
            Line(line_, events);
            line_.clear();
        } else {
            line_ += c;
        }
    }
}

void SseParser::Line(std::string_view line, std::vector<std::string>* events) {
    if (line.empty()) {  // end of the event
        if (!data_.empty()) {
            data_.pop_back();  // the '\n' after the last data line
            events->push_back(std::move(data_));
        }
        data_.clear();
        return;
    }
    if (line.front() == ':') return;  // a comment
    const size_t colon = line.find(':');
    const std::string_view field = line.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (field == "data") {
        data_.append(value);
        data_ += '\n';
    }
}

bool ParseBaseUrl(std::string_view url, BaseUrl* out, std::string* error) {
    constexpr std::string_view kScheme = "http://";
    if (url.substr(0, kScheme.size()) != kScheme) {
        *error = "--base-url: only http:// is supported, got \"" + std::string(url) + "\"";
        return false;
    }
    url.remove_prefix(kScheme.size());
    const size_t slash = url.find('/');
    std::string_view authority = url.substr(0, slash);
    std::string path = slash == std::string_view::npos ? "" : std::string(url.substr(slash));
    while (!path.empty() && path.back() == '/') path.pop_back();
    BaseUrl u;
    u.prefix = path.empty() ? "/v1" : path;
    // [v6]:port, host:port or host.
    size_t colon = std::string_view::npos;
    if (!authority.empty() && authority.front() == '[') {
        const size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            *error = "--base-url: unterminated [ in the host";
            return false;
        }
        u.host = std::string(authority.substr(1, close - 1));
        if (close + 1 < authority.size()) colon = authority[close + 1] == ':' ? close + 1 : authority.size();
    } else {
        colon = authority.rfind(':');
        u.host = std::string(authority.substr(0, colon));
    }
    if (colon != std::string_view::npos) {
        const std::string_view port = authority.substr(colon + 1);
        int v = 0;
        for (const char c : port) {
            if (c < '0' || c > '9' || v > 65535) {
                v = -1;
                break;
            }
            v = v * 10 + (c - '0');
        }
        if (port.empty() || v <= 0 || v > 65535) {
            *error = "--base-url: bad port \"" + std::string(port) + "\"";
            return false;
        }
        u.port = static_cast<uint16_t>(v);
    }
    if (u.host.empty()) {
        *error = "--base-url: no host";
        return false;
    }
    *out = std::move(u);
    return true;
}

Report BuildReport(const std::vector<RequestResult>& results, double duration_s) {
    Report r;
    r.num_requests = static_cast<int64_t>(results.size());
    r.duration_s = duration_s;
    std::vector<double> ttft, tpot, itl, e2e, out_len;
    for (const RequestResult& q : results) {
        if (!q.ok) {
            ++r.errors[q.error];
            continue;
        }
        ++r.num_ok;
        if (q.prompt_tokens >= 0) {
            r.input_tokens += q.prompt_tokens;
            r.input_tokens_known = true;
        }
        r.output_tokens += q.output_tokens;
        out_len.push_back(static_cast<double>(q.output_tokens));
        ttft.push_back(q.ttft_s * 1e3);
        e2e.push_back(q.e2e_s * 1e3);
        if (q.output_tokens > 1) tpot.push_back((q.e2e_s - q.ttft_s) * 1e3 / static_cast<double>(q.output_tokens - 1));
        for (const double g : q.itl_s) itl.push_back(g * 1e3);
    }
    if (duration_s > 0) {
        r.request_throughput = static_cast<double>(r.num_ok) / duration_s;
        r.output_throughput = static_cast<double>(r.output_tokens) / duration_s;
        r.total_throughput = static_cast<double>(r.input_tokens + r.output_tokens) / duration_s;
    }
    r.ttft_ms = Summarize(ttft);
    r.tpot_ms = Summarize(tpot);
    r.itl_ms = Summarize(itl);
    r.e2e_ms = Summarize(e2e);
    r.output_len = Summarize(out_len);
    return r;
}

}  // namespace uniattn::bench
