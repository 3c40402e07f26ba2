// Host token selection (sampling/row_select.h, what Sampler and the CPU backend run per sampled row):
// microseconds per row at a given vocabulary for typical request settings, on seeded N(0, sigma) logits or
// on real rows read from a file of float32 logits [n, VOCAB] (posttrain_engine_logits writes one), cycled.
//   uniattn-select-bench [VOCAB=32000] [ROWS=200] [SIGMA=2.5] [LOGITS_FILE]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <vector>

#include "sampling/row_select.h"

int main(int argc, char** argv) {
    using namespace uniattn;
    const int vocab = argc > 1 ? std::atoi(argv[1]) : 32000;
    const int rows = argc > 2 ? std::atoi(argv[2]) : 200;
    const float sigma = argc > 3 ? static_cast<float>(std::atof(argv[3])) : 2.5f;
    if (vocab < 1 || rows < 1 || !(sigma > 0)) {
        std::fprintf(stderr, "usage: uniattn-select-bench [VOCAB] [ROWS] [SIGMA] [LOGITS_FILE]\n");
        return 2;
    }
    std::mt19937_64 rng(1);
    std::normal_distribution<float> normal(0.f, sigma);
    std::uniform_real_distribution<float> uniform(0.f, 1.f);
    std::vector<float> logits(static_cast<size_t>(vocab) * rows);
    for (float& x : logits) x = normal(rng);
    if (argc > 4) {
        std::ifstream in(argv[4], std::ios::binary);
        std::vector<float> file;
        float v;
        while (in.read(reinterpret_cast<char*>(&v), sizeof v)) file.push_back(v);
        if (file.size() < static_cast<size_t>(vocab) || file.size() % vocab != 0) {
            std::fprintf(stderr, "uniattn-select-bench: %s is not float32 rows of %d logits\n", argv[4], vocab);
            return 2;
        }
        for (size_t i = 0; i < logits.size(); ++i) logits[i] = file[i % file.size()];
    }
    struct Setting {
        const char* name;
        float temperature, top_p, min_p;
        int top_k, num_top;
    };
    const Setting settings[] = {{"greedy", 0.f, 1.f, 0.f, 0, 0},
                                {"temperature 1", 1.f, 1.f, 0.f, 0, 0},
                                {"temperature 0.8, top-p 0.95", 0.8f, 0.95f, 0.f, 0, 0},
                                {"temperature 0.7, top-k 40, top-p 0.9", 0.7f, 0.9f, 0.f, 40, 0},
                                {"temperature 1, min-p 0.05", 1.f, 1.f, 0.05f, 0, 0},
                                {"temperature 0.8, top-p 0.95, 5 top logprobs", 0.8f, 0.95f, 0.f, 0, 5}};
    SelectScratch scratch;
    if (argc > 4) {
        std::printf("vocab %d, %d rows cycling through the rows of %s\n", vocab, rows, argv[4]);
    } else {
        std::printf("vocab %d, %d rows of N(0, %.2f) logits\n", vocab, rows, sigma);
    }
    for (const Setting& s : settings) {
        SampleRowParams p;
        p.temperature = s.temperature;
        p.top_p = s.top_p;
        p.top_k = s.top_k;
        p.use_min_p = s.min_p > 0;
        p.log_min_p = s.min_p > 0 ? std::log(s.min_p) : 0.f;
        p.num_top = s.num_top;
        p.want_logprob = 1;
        int64_t check = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < rows; ++r) {
            p.u = uniform(rng);
            check += SelectToken(logits.data() + static_cast<size_t>(r) * vocab, vocab, p, &scratch).token;
        }
        const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        std::printf("  %-45s %9.1f us/row   (token sum %lld)\n", s.name, us / rows, static_cast<long long>(check));
    }
    return 0;
}
