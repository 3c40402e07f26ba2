// Token selection on the GPU (Backend::SampleRows, backend/cuda/sampling.cu) against its CPU twin, the
// reference of sampling/row_select.h: the same tokens for the same logits and u, token for token, over
// vocabularies of 32000 and 128256, every combination of temperature, top-k, top-p, min-p, the logits
// processors (bias, repetition, presence, frequency, built by Sampler::Prepare from a token history) and
// top logprobs, in one mixed batch whose rows share logits rows. Logits come in several shapes: smooth,
// rounded to quarters (many ties, at the filter boundaries too), flat, one dominant token, all equal.
// Then: the same stories15M greedy text through the engine with device sampling, seeded sampling on
// the device equal to host sampling of the same CUDA logits, and the KV pool sized from free memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels.h"
#include "engine/test_models.h"
#include "sampling/sampler.h"
#include "uniattn/engine.h"

namespace uniattn {
namespace {

using testutil::Rng;

// Logits row `r` of a set: a different shape per row.
std::vector<float> LogitsRow(Rng& rng, int vocab, int r) {
    std::vector<float> l(vocab);
    switch (r % 6) {
        case 0:  // smooth, wide
            for (float& x : l) x = rng.Uniform(-8, 8);
            break;
        case 1:  // quarters: ties everywhere
            for (float& x : l) x = std::round(rng.Uniform(-6, 6) * 4) / 4;
            break;
        case 2:  // flat
            for (float& x : l) x = rng.Uniform(-0.1f, 0.1f);
            break;
        case 3:  // one dominant token and a long tail
            for (float& x : l) x = rng.Uniform(-3, 3);
            l[rng.Int(vocab)] = 25;
            break;
        case 4:  // all equal
            for (float& x : l) x = 1.5f;
            break;
        case 5:  // model-like: a peaked head over a low tail
            for (float& x : l) x = rng.Uniform(-12, 0);
            for (int k = 0; k < 40; ++k) l[rng.Int(vocab)] = rng.Uniform(0, 10);
            break;
    }
    return l;
}

class CudaSamplingTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto gpu = CreateCudaBackend(CudaBackendOptions{});
        if (!gpu.ok()) GTEST_SKIP() << "no CUDA device: " << gpu.status().ToString();
        gpu_ = std::move(gpu).value();
        cpu_ = MakeCpuBackend(8);
    }
    std::unique_ptr<Backend> gpu_, cpu_;
};

struct Batch {
    std::vector<SampleRowParams> rows;
    std::vector<LogitEdit> edits;
};

// Every combination of the parameters, each row on logits row (index % num_logits) with its own history
// and seed.
Batch AllCombinations(int vocab, int num_logits, uint64_t seed) {
    Batch b;
    Rng rng(seed);
    int index = 0;
    for (float temperature : {0.0f, 0.6f, 1.0f, 1.5f}) {
        for (int top_k : {0, 1, 50, 3000}) {
            for (float top_p : {1.0f, 0.9f, 0.4f}) {
                for (float min_p : {0.0f, 0.05f}) {
                    for (bool processors : {false, true}) {
                        for (int logprobs : {0, 5, 20}) {
                            if (temperature == 0 && (top_k != 0 || top_p != 1 || min_p != 0)) continue;
                            SamplingParams sp;
                            sp.temperature = temperature;
                            sp.top_k = top_k;
                            sp.top_p = top_p;
                            sp.min_p = min_p;
                            if (processors) {
                                sp.repetition_penalty = 1.3f;
                                sp.presence_penalty = 0.5f;
                                sp.frequency_penalty = 0.3f;
                                sp.logit_bias = {{rng.Int(vocab), 6.0f}, {rng.Int(vocab), -100.0f}};
                            }
                            sp.num_logprobs = logprobs;
                            sp.want_logprob = logprobs > 0 || index % 2 == 0;
                            sp.seed = seed * 1000 + index;
                            std::vector<int32_t> prompt(200), generated(60);
                            for (int32_t& t : prompt) t = rng.Int(vocab);
                            for (int32_t& t : generated) t = rng.Int(300);  // repeats: frequency counts > 1
                            Sampler sampler(sp, 0);
                            SampleRowParams row;
                            sampler.Prepare(vocab, prompt, generated, &row, &b.edits);
                            row.logits_row = index % num_logits;
                            b.rows.push_back(row);
                            ++index;
                        }
                    }
                }
            }
        }
    }
    return b;
}

TEST_F(CudaSamplingTest, EveryParameterCombinationMatchesTheCpuTwin) {
    for (int vocab : {32000, 128256}) {
        SCOPED_TRACE("vocab " + std::to_string(vocab));
        const int num_logits = 12;
        Rng rng(vocab);
        std::vector<float> logits;
        for (int r = 0; r < num_logits; ++r) {
            const std::vector<float> row = LogitsRow(rng, vocab, r);
            logits.insert(logits.end(), row.begin(), row.end());
        }
        const size_t bytes = sizeof(float) * logits.size();
        auto gbuf = gpu_->Alloc(bytes);
        auto cbuf = cpu_->Alloc(bytes);
        ASSERT_TRUE(gbuf.ok() && cbuf.ok());
        gpu_->CopyToDevice((*gbuf)->data(), logits.data(), bytes);
        cpu_->CopyToDevice((*cbuf)->data(), logits.data(), bytes);
        const Batch b = AllCombinations(vocab, num_logits, vocab + 1);
        const int n = static_cast<int>(b.rows.size());
        std::vector<SampleRowResult> want(n), got(n), again(n);
        for (SampleRowResult& r : got) r.token = -7;  // poison: every row must be written
        cpu_->SampleRows(MakeTensor((*cbuf)->data(), DType::kF32, num_logits, vocab), b.rows.data(), n, b.edits.data(),
                         static_cast<int>(b.edits.size()), want.data());
        const Tensor gt = MakeTensor((*gbuf)->data(), DType::kF32, num_logits, vocab);
        gpu_->SampleRows(gt, b.rows.data(), n, b.edits.data(), static_cast<int>(b.edits.size()), got.data());
        gpu_->SampleRows(gt, b.rows.data(), n, b.edits.data(), static_cast<int>(b.edits.size()), again.data());
        // The logits must come back untouched (processors edit a copy).
        std::vector<float> after(logits.size());
        gpu_->CopyToHost(after.data(), (*gbuf)->data(), bytes);
        EXPECT_EQ(after, logits);

        int token_mismatches = 0, sampled = 0;
        double worst_lp = 0;
        for (int i = 0; i < n; ++i) {
            const SampleRowParams& p = b.rows[i];
            sampled += p.temperature > 0;
            EXPECT_EQ(got[i].token, again[i].token) << "row " << i << ": not deterministic";
            if (got[i].token != want[i].token) {
                ++token_mismatches;
                ADD_FAILURE() << "row " << i << " (logits row " << p.logits_row << ", T " << p.temperature << ", top_k "
                              << p.top_k << ", top_p " << p.top_p << ", min_p " << p.use_min_p << ", edits "
                              << p.num_edits << ", u " << p.u << "): gpu " << got[i].token << " cpu " << want[i].token;
            }
            // Logprobs: the GPU sums exp() in fp32 over up to 128k terms, the CPU in fp64; log Z differs by
            // ~1e-6 relative, and logprobs reach -40 (the dominant-token rows).
            if (p.want_logprob) {
                worst_lp = std::max(worst_lp, std::abs(static_cast<double>(got[i].logprob) - want[i].logprob));
                EXPECT_NEAR(got[i].logprob, want[i].logprob, 2e-4) << "row " << i;
            } else {
                EXPECT_EQ(got[i].logprob, 0.0f);
            }
            ASSERT_EQ(got[i].num_top, want[i].num_top) << "row " << i;
            for (int k = 0; k < want[i].num_top; ++k) {
                EXPECT_EQ(got[i].top_ids[k], want[i].top_ids[k]) << "row " << i << " top " << k;
                EXPECT_NEAR(got[i].top_logprobs[k], want[i].top_logprobs[k], 2e-4) << "row " << i << " top " << k;
            }
        }
        std::printf(
            "[ metric   ] vocab %d: %d rows (%d sampled, %zu edits), %d token mismatches, max |dlogprob| %.3g\n", vocab,
            n, sampled, b.edits.size(), token_mismatches, worst_lp);
        EXPECT_GT(sampled, 300);
    }
}

// Few rows per launch, as at batch 1: with sampling_blocks_per_row several blocks share each row (slices of the
// row, histograms exchanged through global memory behind a barrier per row). Every combination of the test above,
// launched 1, 2, 3 or 5 rows at a time, on backends allowing 64 and 3 blocks a row: the CPU twin's tokens and top
// ids, logprobs within the same bound, and run twice alike (the barriers leave their counters ready for the next
// launch). Both vocabularies, so the slices end inside a 1024-id run and one part may be short.
TEST_F(CudaSamplingTest, RowGroupsOfSeveralBlocksMatchTheCpuTwin) {
    int num_sms = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
    ASSERT_GE(num_sms, 16);
    for (int max_parts : {64, 3}) {
        // Every launch below splits its rows (a silent one-block launch would pass without testing the groups).
        for (int rows : {1, 2, 3, 5}) {
            for (int vocab : {32000, 128256}) {
                const cuda::SampleSplit plan = cuda::PlanSampleSplit(vocab, rows, max_parts, num_sms);
                EXPECT_GE(plan.parts, std::min(3, num_sms / rows)) << rows << " rows, vocab " << vocab;
                EXPECT_LE(plan.parts * rows, num_sms);
                EXPECT_GE(plan.parts * plan.slice, vocab);
                EXPECT_LT((plan.parts - 1) * plan.slice, vocab);  // no empty part
            }
        }
        CudaBackendOptions options;
        options.sampling_blocks_per_row = max_parts;
        auto made = CreateCudaBackend(options);
        ASSERT_TRUE(made.ok()) << made.status().ToString();
        std::unique_ptr<Backend> split = std::move(made).value();
        for (int vocab : {32000, 128256}) {
            SCOPED_TRACE("vocab " + std::to_string(vocab) + ", up to " + std::to_string(max_parts) + " blocks a row");
            const int num_logits = 12;
            Rng rng(vocab + 7);
            std::vector<float> logits;
            for (int r = 0; r < num_logits; ++r) {
                const std::vector<float> row = LogitsRow(rng, vocab, r);
                logits.insert(logits.end(), row.begin(), row.end());
            }
            const size_t bytes = sizeof(float) * logits.size();
            auto gbuf = split->Alloc(bytes);
            ASSERT_TRUE(gbuf.ok());
            split->CopyToDevice((*gbuf)->data(), logits.data(), bytes);
            const Tensor gt = MakeTensor((*gbuf)->data(), DType::kF32, num_logits, vocab);
            const Tensor ct = MakeTensor(logits.data(), DType::kF32, num_logits, vocab);
            const Batch b = AllCombinations(vocab, num_logits, vocab + 3);
            const int n = static_cast<int>(b.rows.size());
            int checked = 0, sampled = 0;
            for (int start = 0, k = 0; start < n; start += std::min(n - start, 1 + (k % 4 == 3 ? 4 : k % 4)), ++k) {
                const int count = std::min(n - start, 1 + (k % 4 == 3 ? 4 : k % 4));  // 1, 2, 3, 5 rows
                // The rows' edits are a contiguous run of b.edits; pass the whole list, as the engine does.
                std::vector<SampleRowResult> want(count), got(count), again(count);
                for (SampleRowResult& r : got) r.token = -7;
                cpu_->SampleRows(ct, b.rows.data() + start, count, b.edits.data(), static_cast<int>(b.edits.size()),
                                 want.data());
                split->SampleRows(gt, b.rows.data() + start, count, b.edits.data(), static_cast<int>(b.edits.size()),
                                  got.data());
                split->SampleRows(gt, b.rows.data() + start, count, b.edits.data(), static_cast<int>(b.edits.size()),
                                  again.data());
                for (int i = 0; i < count; ++i) {
                    const SampleRowParams& p = b.rows[start + i];
                    sampled += p.temperature > 0;
                    ++checked;
                    EXPECT_EQ(got[i].token, again[i].token) << "row " << start + i << ": not deterministic";
                    EXPECT_EQ(got[i].token, want[i].token)
                        << "row " << start + i << " (T " << p.temperature << ", top_k " << p.top_k << ", top_p "
                        << p.top_p << ", min_p " << p.use_min_p << ", edits " << p.num_edits << ", u " << p.u << ")";
                    if (p.want_logprob) {
                        EXPECT_NEAR(got[i].logprob, want[i].logprob, 2e-4) << "row " << start + i;
                    } else {
                        EXPECT_EQ(got[i].logprob, 0.0f);
                    }
                    ASSERT_EQ(got[i].num_top, want[i].num_top) << "row " << start + i;
                    for (int t = 0; t < want[i].num_top; ++t) {
                        EXPECT_EQ(got[i].top_ids[t], want[i].top_ids[t]) << "row " << start + i << " top " << t;
                        EXPECT_NEAR(got[i].top_logprobs[t], want[i].top_logprobs[t], 2e-4)
                            << "row " << start + i << " top " << t;
                    }
                }
            }
            std::vector<float> after(logits.size());
            split->CopyToHost(after.data(), (*gbuf)->data(), bytes);
            EXPECT_EQ(after, logits);  // processors edit a copy
            EXPECT_EQ(checked, n);
            EXPECT_GT(sampled, 300);
        }
    }
}

// The kernel itself with and without row groups, on the same device buffers (so nothing between the option and the
// launch can make the comparison vacuous): the same tokens and top ids exactly, logprobs within fp32 summation
// order, also on rows with NaN and infinities, where greedy rows follow the reference's argmax rule (a NaN at id 0
// wins, NaN elsewhere never does).
TEST_F(CudaSamplingTest, RowGroupsGiveTheOneBlockResultsOnTheSameBuffers) {
    int num_sms = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
    const int vocab = 128256, num_logits = 9;
    Rng rng(21);
    std::vector<float> logits;
    for (int r = 0; r < 6; ++r) {
        const std::vector<float> row = LogitsRow(rng, vocab, r);
        logits.insert(logits.end(), row.begin(), row.end());
    }
    std::vector<float> nan0 = LogitsRow(rng, vocab, 0), nans = LogitsRow(rng, vocab, 5),
                       infs = LogitsRow(rng, vocab, 3);
    nan0[0] = nan0[77] = std::nanf("");
    for (int k = 0; k < 100; ++k) nans[rng.Int(vocab)] = std::nanf("");
    nans[5] = -INFINITY;
    for (int k = 0; k < 5000; ++k) infs[rng.Int(vocab)] = -INFINITY;
    for (const auto* row : {&nan0, &nans, &infs}) logits.insert(logits.end(), row->begin(), row->end());
    Batch b = AllCombinations(vocab, num_logits, 77);
    for (int r = 6; r < num_logits; ++r) {  // greedy rows on the NaN / inf logits, with logprobs and without
        for (int top : {0, 5}) {
            SampleRowParams greedy;
            greedy.logits_row = r;
            greedy.want_logprob = top > 0;
            greedy.num_top = top;
            b.rows.push_back(greedy);
        }
    }
    const int n = static_cast<int>(b.rows.size());
    auto upload = [&](const void* data, size_t bytes) {
        auto buf = gpu_->Alloc(bytes);
        EXPECT_TRUE(buf.ok());
        if (data != nullptr) gpu_->CopyToDevice((*buf)->data(), data, bytes);
        return std::move(buf).value();
    };
    auto dl = upload(logits.data(), sizeof(float) * logits.size());
    auto drows = upload(b.rows.data(), sizeof(SampleRowParams) * n);
    auto dedits = upload(b.edits.data(), sizeof(LogitEdit) * std::max<size_t>(b.edits.size(), 1));
    const int max_rows = 3;
    auto work = upload(nullptr, sizeof(float) * max_rows * vocab);
    auto one = upload(nullptr, sizeof(SampleRowResult) * max_rows);
    auto grouped = upload(nullptr, sizeof(SampleRowResult) * max_rows);
    auto scratch =
        upload(nullptr, cuda::SampleSplitScratchBytes(max_rows, cuda::PlanSampleSplit(vocab, 1, 64, num_sms)));
    auto barriers = upload(nullptr, sizeof(unsigned) * 2 * max_rows);
    ASSERT_EQ(cudaMemset(barriers->data(), 0, sizeof(unsigned) * 2 * max_rows), cudaSuccess);
    gpu_->Synchronize();
    const auto* rows = static_cast<const SampleRowParams*>(drows->data());
    const auto* edits = static_cast<const LogitEdit*>(dedits->data());
    int compared = 0, greedy_nan_rows = 0;
    for (int start = 0, k = 0; start < n; ++k) {
        const int count = std::min(n - start, k % 2 == 0 ? 1 : max_rows);
        const cuda::SampleSplit plan = cuda::PlanSampleSplit(vocab, count, 64, num_sms);
        ASSERT_GE(plan.parts, 2);
        ASSERT_LE(cuda::SampleSplitScratchBytes(count, plan), scratch->bytes());
        cuda::SampleRows(static_cast<const float*>(dl->data()), vocab, vocab, count, rows + start, edits,
                         static_cast<float*>(work->data()), static_cast<SampleRowResult*>(one->data()),
                         cuda::SampleSplit{}, nullptr, nullptr, cuda::Stream(nullptr));
        cuda::SampleRows(static_cast<const float*>(dl->data()), vocab, vocab, count, rows + start, edits,
                         static_cast<float*>(work->data()), static_cast<SampleRowResult*>(grouped->data()), plan,
                         scratch->data(), static_cast<unsigned*>(barriers->data()), cuda::Stream(nullptr));
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<SampleRowResult> want(count), got(count);
        ASSERT_EQ(cudaMemcpy(want.data(), one->data(), sizeof(SampleRowResult) * count, cudaMemcpyDeviceToHost),
                  cudaSuccess);
        ASSERT_EQ(cudaMemcpy(got.data(), grouped->data(), sizeof(SampleRowResult) * count, cudaMemcpyDeviceToHost),
                  cudaSuccess);
        for (int i = 0; i < count; ++i) {
            const SampleRowParams& p = b.rows[start + i];
            SCOPED_TRACE("row " + std::to_string(start + i) + ", logits row " + std::to_string(p.logits_row) + ", T " +
                         std::to_string(p.temperature) + ", " + std::to_string(plan.parts) + " parts");
            EXPECT_EQ(got[i].token, want[i].token);
            if (std::isnan(want[i].logprob)) {
                EXPECT_TRUE(std::isnan(got[i].logprob));
            } else {
                EXPECT_NEAR(got[i].logprob, want[i].logprob, 1e-4);
            }
            ASSERT_EQ(got[i].num_top, want[i].num_top);
            for (int t = 0; t < want[i].num_top; ++t) EXPECT_EQ(got[i].top_ids[t], want[i].top_ids[t]);
            if (p.logits_row >= 6 && p.temperature == 0 && p.num_edits == 0) {  // the argmax rule on NaN / inf rows
                const float* l = logits.data() + static_cast<size_t>(p.logits_row) * vocab;
                int argmax = 0;
                for (int j = 1; j < vocab; ++j) {
                    if (l[j] > l[argmax]) argmax = j;
                }
                EXPECT_EQ(got[i].token, argmax);
                ++greedy_nan_rows;
            }
            ++compared;
        }
        start += count;
    }
    EXPECT_EQ(compared, n);
    EXPECT_GT(greedy_nan_rows, 3);
}

// A small share of the above for compute-sanitizer (memcheck, racecheck, synccheck): every 23rd combination over a
// vocabulary of 5000, one row a launch in groups of up to 8 blocks (slices of 640 ids), against the CPU twin.
TEST_F(CudaSamplingTest, RowGroupsSmallCasesForSanitizers) {
    CudaBackendOptions options;
    options.sampling_blocks_per_row = 8;
    auto made = CreateCudaBackend(options);
    ASSERT_TRUE(made.ok()) << made.status().ToString();
    std::unique_ptr<Backend> split = std::move(made).value();
    const int vocab = 5000, num_logits = 6;
    Rng rng(11);
    std::vector<float> logits;
    for (int r = 0; r < num_logits; ++r) {
        const std::vector<float> row = LogitsRow(rng, vocab, r);
        logits.insert(logits.end(), row.begin(), row.end());
    }
    auto gbuf = split->Alloc(sizeof(float) * logits.size());
    ASSERT_TRUE(gbuf.ok());
    split->CopyToDevice((*gbuf)->data(), logits.data(), sizeof(float) * logits.size());
    const Tensor gt = MakeTensor((*gbuf)->data(), DType::kF32, num_logits, vocab);
    const Tensor ct = MakeTensor(logits.data(), DType::kF32, num_logits, vocab);
    const Batch b = AllCombinations(vocab, num_logits, 5);
    int checked = 0;
    for (size_t i = 0; i < b.rows.size(); i += 23) {
        SampleRowResult want, got;
        got.token = -7;
        cpu_->SampleRows(ct, &b.rows[i], 1, b.edits.data(), static_cast<int>(b.edits.size()), &want);
        split->SampleRows(gt, &b.rows[i], 1, b.edits.data(), static_cast<int>(b.edits.size()), &got);
        EXPECT_EQ(got.token, want.token) << "row " << i;
        ASSERT_EQ(got.num_top, want.num_top) << "row " << i;
        for (int t = 0; t < want.num_top; ++t) EXPECT_EQ(got.top_ids[t], want.top_ids[t]) << "row " << i;
        ++checked;
    }
    EXPECT_GT(checked, 20);
}

// Many draws of one row: the GPU follows u exactly like the CPU, over the whole range of u.
TEST_F(CudaSamplingTest, SweepOfUMatchesTheCpuTwin) {
    const int vocab = 32000, n = 512;
    Rng rng(3);
    std::vector<float> logits = LogitsRow(rng, vocab, 5);
    auto gbuf = gpu_->Alloc(sizeof(float) * vocab);
    ASSERT_TRUE(gbuf.ok());
    gpu_->CopyToDevice((*gbuf)->data(), logits.data(), sizeof(float) * vocab);
    std::vector<SampleRowParams> rows(n);
    for (int i = 0; i < n; ++i) {
        rows[i].temperature = 0.8f;
        rows[i].top_p = i % 2 ? 0.95f : 1.0f;
        rows[i].u = static_cast<float>(i) / n;
    }
    std::vector<SampleRowResult> got(n);
    gpu_->SampleRows(MakeTensor((*gbuf)->data(), DType::kF32, 1, vocab), rows.data(), n, nullptr, 0, got.data());
    std::vector<SampleRowResult> want(n);
    cpu_->SampleRows(MakeTensor(logits.data(), DType::kF32, 1, vocab), rows.data(), n, nullptr, 0, want.data());
    int distinct = 0;
    for (int i = 0; i < n; ++i) {
        EXPECT_EQ(got[i].token, want[i].token) << "u " << rows[i].u;
        distinct += i == 0 || got[i].token != got[i - 1].token;
    }
    EXPECT_GT(distinct, 10);
}

// ---------------------------------------------------------------------------------------------------------
// Through the engine.

struct Drawn {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<std::vector<TokenLogprob>> top;
};

std::map<int, Drawn> Drain(RequestHandle& h) {
    std::map<int, Drawn> out;
    RequestEvent e;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!h.closed() && std::chrono::steady_clock::now() < deadline) {
        if (!h.Next(&e, std::chrono::milliseconds(50))) continue;
        EXPECT_NE(e.kind, RequestEvent::Kind::kError) << e.error.ToString();
        if (e.kind != RequestEvent::Kind::kToken) continue;
        out[e.index].tokens.push_back(e.token);
        out[e.index].logprobs.push_back(e.logprob);
        out[e.index].top.push_back(e.top_logprobs);
    }
    EXPECT_TRUE(h.closed());
    return out;
}

// BOS "Once upon a time", 10 greedy tokens, and what stories15M answers (the project's oracle).
GenerationRequest OncePromptGreedy(int logprobs) {
    GenerationRequest r;
    r.prompt_ids = {1, 9038, 2501, 263, 931};
    r.max_tokens = 10;
    r.temperature = 0;
    r.logprobs = logprobs;
    return r;
}
const std::vector<int32_t> kOnceGreedy = {29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889};

EngineConfig CudaEngineConfig(EngineConfig::SamplingPlace place) {
    EngineConfig c;
    c.model_dir = testutil::DefaultModelDir();
    c.backend = "cuda";
    c.kv_cache_bytes = 0;
    c.kv_cache_memory_fraction = 0.05;  // of free device memory
    c.max_num_seqs = 16;
    c.sampling_place = place;
    return c;
}

TEST_F(CudaSamplingTest, EngineGreedyStoriesWithDeviceSamplingAndAKvPoolFromFreeMemory) {
    const size_t free_before = gpu_->FreeDeviceBytes();
    auto engine = Engine::Create(CudaEngineConfig(EngineConfig::SamplingPlace::kBackend));
    ASSERT_TRUE(engine.ok()) << testutil::kMissingDefaultModel << " (" << engine.status().ToString() << ")";
    const EngineStats stats = (*engine)->Stats();
    std::printf("[ metric   ] KV pool %.1f MiB from %.1f MiB free before the engine\n",
                static_cast<double>(stats.kv_bytes_total) / (1 << 20), static_cast<double>(free_before) / (1 << 20));
    // 5% of what is free after the weights (~60 MB fp16) and workspaces, rounded down to whole blocks.
    EXPECT_LE(stats.kv_bytes_total, static_cast<int64_t>(0.05 * static_cast<double>(free_before)));
    EXPECT_GE(stats.kv_bytes_total, static_cast<int64_t>(0.05 * (static_cast<double>(free_before) - (1ull << 30))));
    const GenerationRequest r = OncePromptGreedy(3);
    auto h = (*engine)->Submit(r);
    ASSERT_TRUE(h.ok());
    const auto out = Drain(**h);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out.at(0).tokens, kOnceGreedy);
    for (size_t t = 0; t < out.at(0).top.size(); ++t) {
        ASSERT_EQ(out.at(0).top[t].size(), 3u);
        EXPECT_EQ(out.at(0).top[t][0].token, out.at(0).tokens[t]);
        EXPECT_EQ(out.at(0).top[t][0].logprob, out.at(0).logprobs[t]);
        EXPECT_LT(out.at(0).logprobs[t], 0.0f);
    }
    // A pool that large serves 16 concurrent samples of the whole context.
    GenerationRequest many = r;
    many.n = 16;
    many.max_tokens = 200;
    many.temperature = 1;
    many.ignore_eos = true;
    auto hm = (*engine)->Submit(many);
    ASSERT_TRUE(hm.ok()) << hm.status().ToString();
    const auto outm = Drain(**hm);
    ASSERT_EQ(outm.size(), 16u);
    for (const auto& [index, d] : outm) EXPECT_EQ(d.tokens.size(), 200u) << "sample " << index;
}

// engine.dtype reaches the CUDA backend: weights and KV in the dtype asked, "auto" = float16 for a float32
// checkpoint; the greedy oracle holds in each (bfloat16 included, on this prompt).
TEST_F(CudaSamplingTest, EngineDtypeReachesTheBackend) {
    const std::pair<const char*, const char*> cases[] = {
        {"auto", "F16 / F16"}, {"float16", "F16 / F16"}, {"bfloat16", "BF16 / BF16"}, {"float32", "F32 / F32"}};
    for (const auto& [dtype, want] : cases) {
        SCOPED_TRACE(dtype);
        EngineConfig c = CudaEngineConfig(EngineConfig::SamplingPlace::kBackend);
        c.dtype = dtype;
        auto engine = Engine::Create(c);
        ASSERT_TRUE(engine.ok()) << engine.status().ToString();
        EXPECT_EQ((*engine)->model_info().dtype, want);
        auto h = (*engine)->Submit(OncePromptGreedy(-1));
        ASSERT_TRUE(h.ok());
        const auto out = Drain(**h);
        ASSERT_EQ(out.size(), 1u);
        EXPECT_EQ(out.at(0).tokens, kOnceGreedy);
    }
}

// Seeded requests draw the same tokens with device sampling as with host sampling of the same CUDA
// logits: n > 1 samples forked from one prompt, every processor, top logprobs.
TEST_F(CudaSamplingTest, EngineDeviceSamplingEqualsHostSampling) {
    std::map<int, Drawn> runs[2];
    const EngineConfig::SamplingPlace places[2] = {EngineConfig::SamplingPlace::kHost,
                                                   EngineConfig::SamplingPlace::kBackend};
    for (int k = 0; k < 2; ++k) {
        auto engine = Engine::Create(CudaEngineConfig(places[k]));
        ASSERT_TRUE(engine.ok()) << engine.status().ToString();
        GenerationRequest r;
        r.prompt_ids = {1, 9038, 2501, 263, 931};
        r.max_tokens = 40;
        r.n = 3;
        r.temperature = 0.9f;
        r.top_p = 0.9f;
        r.top_k = 40;
        r.min_p = 0.02f;
        r.repetition_penalty = 1.2f;
        r.presence_penalty = 0.4f;
        r.frequency_penalty = 0.2f;
        r.logit_bias = {{263, 2.0f}, {29889, -5.0f}};
        r.seed = 77;
        r.logprobs = 4;
        r.ignore_eos = true;
        auto h = (*engine)->Submit(r);
        ASSERT_TRUE(h.ok());
        runs[k] = Drain(**h);
    }
    ASSERT_EQ(runs[0].size(), 3u);
    ASSERT_EQ(runs[1].size(), 3u);
    for (int i = 0; i < 3; ++i) {
        SCOPED_TRACE("sample " + std::to_string(i));
        const Drawn &host = runs[0].at(i), &dev = runs[1].at(i);
        EXPECT_EQ(dev.tokens, host.tokens);
        ASSERT_EQ(dev.logprobs.size(), host.logprobs.size());
        for (size_t t = 0; t < host.logprobs.size(); ++t) {
            EXPECT_NEAR(dev.logprobs[t], host.logprobs[t], 1e-4);  // fp32 vs fp64 log Z over 32000 terms
            ASSERT_EQ(dev.top[t].size(), 4u);
            for (size_t k = 0; k < 4; ++k) EXPECT_EQ(dev.top[t][k].token, host.top[t][k].token);
        }
    }
    EXPECT_NE(runs[0].at(0).tokens, runs[0].at(1).tokens);
}

}  // namespace
}  // namespace uniattn
