// The op-test fixture and case builders every backend's op tests share: tests/engine/ops_test.cc (each
// backend against a float64 reference) and tests/gpu/cuda_ops_test.cc (CUDA against the CPU backend).
// Host data goes to a backend through OpFixture (buffers live until the test ends); paged-attention steps
// are built once by MakeAttnSetup and uploaded by UploadBatch / UploadPlane on whichever backend runs them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "engine/test_models.h"

namespace uniattn::testutil {

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

inline std::vector<float> RandomVector(Rng& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    for (float& x : v) x = rng.Uniform(lo, hi);
    return v;
}

// Unscaled RoPE inverse frequencies theta^(-2i/head_dim), i < head_dim/2 (ModelConfig::RopeInvFreq by default).
inline std::vector<double> DefaultInvFreq(double theta, int head_dim) {
    std::vector<double> inv(head_dim / 2);
    for (int i = 0; i < head_dim / 2; ++i) inv[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / head_dim);
    return inv;
}

// Random contents for a whole KV plane [num_blocks, block_size, num_kv_heads, head_dim].
struct HostPlane {
    int64_t num_blocks;
    int block_size, num_kv_heads, head_dim;
    std::vector<float> data;

    int64_t Offset(int64_t slot, int kv_head) const {
        return (slot * num_kv_heads + kv_head) * static_cast<int64_t>(head_dim);
    }
    const float* At(int64_t slot, int kv_head) const { return data.data() + Offset(slot, kv_head); }
    float* At(int64_t slot, int kv_head) { return data.data() + Offset(slot, kv_head); }
};

// One attention step: several sequences, each with `cached` tokens already in the cache and a chunk of
// new query tokens after them. Blocks of every sequence are a shuffled, interleaved subset of the pool,
// and every slot no sequence owns (and every slot past a sequence's context) holds NaN, so reading
// outside the causal window poisons the result.
struct AttnCase {
    int num_heads, num_kv_heads, head_dim, block_size;
    std::vector<int> context_lens;  // tokens in the cache once this step's are written
    std::vector<int> chunk_lens;    // this step's query tokens per sequence (the last ones of the context)
};

inline std::string Describe(const AttnCase& c) {
    std::string s = "heads " + std::to_string(c.num_heads) + "/" + std::to_string(c.num_kv_heads) + " head_dim " +
                    std::to_string(c.head_dim) + " block " + std::to_string(c.block_size) + " ctx/chunk";
    for (size_t i = 0; i < c.context_lens.size(); ++i) {
        s += " " + std::to_string(c.context_lens[i]) + "/" + std::to_string(c.chunk_lens[i]);
    }
    return s;
}

// The host image of one step: fp32 K/V planes (NaN where unowned) and the batch metadata.
struct AttnSetup {
    HostPlane k, v;
    std::vector<int32_t> query_start, context_len, block_tables, positions;
    std::vector<int64_t> slot_mapping;
    std::vector<int> seq_of;
    int max_blocks_per_seq = 0, max_context_len = 0, max_query_len = 0, num_tokens = 0;

    int64_t Slot(int seq, int j) const {
        return static_cast<int64_t>(block_tables[seq * max_blocks_per_seq + j / k.block_size]) * k.block_size +
               j % k.block_size;
    }
};

inline AttnSetup MakeAttnSetup(Rng& rng, const AttnCase& c) {
    AttnSetup s;
    const int num_seqs = static_cast<int>(c.context_lens.size());
    std::vector<int> blocks_needed(num_seqs);
    int total_blocks = 2;  // spare blocks nobody owns
    for (int i = 0; i < num_seqs; ++i) {
        blocks_needed[i] = (c.context_lens[i] + c.block_size - 1) / c.block_size;
        total_blocks += blocks_needed[i];
        s.max_blocks_per_seq = std::max(s.max_blocks_per_seq, blocks_needed[i]);
        s.max_context_len = std::max(s.max_context_len, c.context_lens[i]);
        s.max_query_len = std::max(s.max_query_len, c.chunk_lens[i]);
    }
    std::vector<int32_t> pool(total_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    for (size_t i = pool.size() - 1; i > 0; --i) std::swap(pool[i], pool[rng.Int(static_cast<int>(i + 1))]);
    // Padding entries of the table point at a spare block: they must never be read.
    s.block_tables.assign(static_cast<size_t>(num_seqs) * s.max_blocks_per_seq, pool.back());
    size_t next = 0;
    for (int i = 0; i < num_seqs; ++i) {
        for (int b = 0; b < blocks_needed[i]; ++b) s.block_tables[i * s.max_blocks_per_seq + b] = pool[next++];
    }
    const size_t plane_size = static_cast<size_t>(total_blocks) * c.block_size * c.num_kv_heads * c.head_dim;
    s.k = HostPlane{total_blocks, c.block_size, c.num_kv_heads, c.head_dim, std::vector<float>(plane_size, kNaN)};
    s.v = s.k;
    s.query_start.push_back(0);
    for (int i = 0; i < num_seqs; ++i) {
        for (int j = 0; j < c.context_lens[i]; ++j) {
            for (int h = 0; h < c.num_kv_heads; ++h) {
                for (int e = 0; e < c.head_dim; ++e) {
                    s.k.At(s.Slot(i, j), h)[e] = rng.Uniform(-1.0f, 1.0f);
                    s.v.At(s.Slot(i, j), h)[e] = rng.Uniform(-1.0f, 1.0f);
                }
            }
        }
        const int start = c.context_lens[i] - c.chunk_lens[i];
        for (int j = start; j < c.context_lens[i]; ++j) {
            s.positions.push_back(j);
            s.slot_mapping.push_back(s.Slot(i, j));
            s.seq_of.push_back(i);
        }
        s.query_start.push_back(static_cast<int32_t>(s.positions.size()));
        s.context_len.push_back(c.context_lens[i]);
    }
    s.num_tokens = static_cast<int>(s.positions.size());
    return s;
}

// Sequence i of a step on its own: the same blocks and tokens, batch of one.
inline AttnSetup OneSequence(const AttnSetup& s, int i) {
    AttnSetup one = s;
    const int begin = s.query_start[i], end = s.query_start[i + 1];
    one.query_start = {0, end - begin};
    one.context_len = {s.context_len[i]};
    one.block_tables.assign(s.block_tables.begin() + i * s.max_blocks_per_seq,
                            s.block_tables.begin() + (i + 1) * s.max_blocks_per_seq);
    one.positions.assign(s.positions.begin() + begin, s.positions.begin() + end);
    one.slot_mapping.assign(s.slot_mapping.begin() + begin, s.slot_mapping.begin() + end);
    one.num_tokens = end - begin;
    one.max_context_len = s.context_len[i];
    one.max_query_len = end - begin;
    one.seq_of.assign(one.num_tokens, 0);
    return one;
}

// Random probability rows [num_tokens, num_heads, max_context_len]: each sums to 1 over 0..pos, NaN beyond.
inline std::vector<float> RandomProbs(Rng& rng, const AttnSetup& s, int num_heads) {
    std::vector<float> probs(static_cast<size_t>(s.num_tokens) * num_heads * s.max_context_len, kNaN);
    for (int t = 0; t < s.num_tokens; ++t) {
        for (int h = 0; h < num_heads; ++h) {
            float* row = probs.data() + (static_cast<size_t>(t) * num_heads + h) * s.max_context_len;
            double sum = 0;
            for (int j = 0; j <= s.positions[t]; ++j) sum += (row[j] = rng.Uniform(0.0f, 1.0f));
            for (int j = 0; j <= s.positions[t]; ++j) row[j] = static_cast<float>(row[j] / sum);
        }
    }
    return probs;
}

// The fixture of every backend's op tests (Base: ::testing::Test, or TestWithParam for tests run once per
// backend). Uploads are owned by the fixture and live until the test ends.
template <typename Base = ::testing::Test>
class OpFixture : public Base {
  protected:
    // Copies host values to a new buffer of `be`, as they are.
    template <typename T>
    T* UploadTo(Backend* be, const std::vector<T>& host) {
        auto buf = be->Alloc(std::max<size_t>(host.size(), 1) * sizeof(T));
        EXPECT_TRUE(buf.ok());
        be->CopyToDevice((*buf)->data(), host.data(), host.size() * sizeof(T));
        T* p = static_cast<T*>((*buf)->data());
        buffers_.push_back(std::move(buf).value());
        return p;
    }
    // Uploads fp32 host values to `be` in `dtype`, converted (callers round first to keep them exact).
    void* UploadTo(Backend* be, const std::vector<float>& host, DType dtype) {
        if (dtype == DType::kF32) return UploadTo(be, host);
        std::vector<uint16_t> h(host.size());
        for (size_t i = 0; i < h.size(); ++i) h[i] = dtype == DType::kF16 ? FloatToHalf(host[i]) : FloatToBF16(host[i]);
        return UploadTo(be, h);
    }
    // n values of `dtype` from `be`, as fp32 (waits for the device first).
    std::vector<float> DownloadFrom(Backend* be, const void* p, size_t n, DType dtype = DType::kF32) {
        be->Synchronize();
        std::vector<float> out(n);
        if (dtype == DType::kF32) {
            be->CopyToHost(out.data(), p, n * sizeof(float));
        } else {
            std::vector<uint16_t> h(n);
            be->CopyToHost(h.data(), p, n * sizeof(uint16_t));
            for (size_t i = 0; i < n; ++i) out[i] = dtype == DType::kF16 ? HalfToFloat(h[i]) : BF16ToFloat(h[i]);
        }
        return out;
    }

    // The step's metadata on `be` (max_query_len as the setup has it).
    AttentionBatch UploadBatch(Backend* be, const AttnSetup& s) {
        AttentionBatch b;
        b.num_seqs = static_cast<int>(s.context_len.size());
        b.num_tokens = s.num_tokens;
        b.query_start = UploadTo(be, s.query_start);
        b.context_len = UploadTo(be, s.context_len);
        b.block_tables = UploadTo(be, s.block_tables);
        b.max_blocks_per_seq = s.max_blocks_per_seq;
        b.positions = UploadTo(be, s.positions);
        b.slot_mapping = UploadTo(be, s.slot_mapping);
        b.max_context_len = s.max_context_len;
        b.max_query_len = s.max_query_len;
        return b;
    }
    // A KV plane on `be` in `dtype` holding the host plane's values.
    KvPlane UploadPlane(Backend* be, const HostPlane& p, DType dtype = DType::kF32) {
        return KvPlane{UploadTo(be, p.data, dtype), dtype, p.num_blocks, p.block_size, p.num_kv_heads, p.head_dim};
    }

    std::vector<std::unique_ptr<DeviceBuffer>> buffers_;
};

}  // namespace uniattn::testutil
