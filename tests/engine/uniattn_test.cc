// UniAttn semantics (docs/uniattn.md): the engine against a float64 reference of the public
// PyTorch code's semantics (P handed from layer to layer, every layer keeping its full K and V, whole
// sequences without a cache), on random tiny models with GQA, through chunked prefill followed by
// token-by-token decode over a paged cache. Also: the loader's refusals (docs/uniattn.md §5), G = 1 and B = E equal
// the standard model, and the two controls that must make the comparison fail.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "engine/reference_model.h"
#include "engine/test_models.h"
#include "kv/block_manager.h"
#include "model/model.h"
#include "model/session.h"
#include "model/unify.h"

namespace uniattn {
namespace {

using testutil::NamedTensor;
using testutil::RandomModelOptions;
using testutil::TempDir;

using testref::Matrix;
using testref::ReferenceForward;
using testref::ReferenceOptions;

// Engine logits for every position: a prefill of `prefill` tokens in chunks of `chunk`, then one token
// at a time.
std::vector<float> EngineLogits(const std::string& dir, const std::vector<int32_t>& ids, int prefill, int chunk,
                                int block_size) {
    auto backend = MakeCpuBackend(2);
    auto model = Model::Load(dir, backend.get(), /*load_tokenizer=*/false);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    if (!model.ok()) return {};
    auto session = Session::Create(model->get(), backend.get(), block_size, chunk);
    EXPECT_TRUE(session.ok());
    std::vector<float> all, step;
    EXPECT_TRUE((*session)->Append({ids.begin(), ids.begin() + prefill}, true, &step).ok());
    all = step;
    for (size_t i = prefill; i < ids.size(); ++i) {
        EXPECT_TRUE((*session)->Append({ids[i]}, false, &step).ok());
        all.insert(all.end(), step.begin(), step.end());
    }
    return all;
}

double RelativeError(const std::vector<float>& got, const Matrix& want) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        max_diff = std::max(max_diff, std::abs(got[i] - want[i]));
        max_ref = std::max(max_ref, std::abs(want[i]));
    }
    return max_diff / max_ref;
}

RandomModelOptions SixLayerGqa() {
    RandomModelOptions o;
    o.vocab_size = 83;
    o.hidden_size = 48;
    o.intermediate_size = 72;
    o.num_layers = 6;
    o.num_heads = 6;
    o.num_kv_heads = 2;  // GQA, n_rep = 3
    o.max_position_embeddings = 64;
    o.seed = 11;
    return o;
}

std::vector<int32_t> Tokens(int n, int vocab, uint64_t seed) {
    testutil::Rng rng(seed);
    std::vector<int32_t> ids;
    for (int i = 0; i < n; ++i) ids.push_back(rng.Int(vocab));
    return ids;
}

struct Grouping {
    int g, b, e;
};

class UniAttnReferenceTest : public ::testing::TestWithParam<Grouping> {};

TEST_P(UniAttnReferenceTest, EngineMatchesFloat64ReferenceThroughChunkedPrefillAndDecode) {
    const Grouping gr = GetParam();
    RandomModelOptions o = SixLayerGqa();
    o.has_grouping = true;
    o.grouping_idx = gr.g;
    o.grouping_begin_idx = gr.b;
    o.grouping_end_idx = gr.e;
    const ModelConfig config = testutil::MakeConfig(o);
    ASSERT_GT(config.num_reuse_layers(), 0);
    const std::vector<NamedTensor> tensors = testutil::MakeRandomTensors(config, DType::kF32, o.seed);
    TempDir tmp;
    ASSERT_TRUE(testutil::WriteModelDir(tmp.path(), config, tensors, DType::kF32).ok());

    const std::vector<int32_t> ids = Tokens(37, o.vocab_size, 5);
    const Matrix want = ReferenceForward(config, tensors, ids);
    const std::vector<float> got = EngineLogits(tmp.path(), ids, /*prefill=*/23, /*chunk=*/7, /*block_size=*/4);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(RelativeError(got, want), 1e-4);

    // Controls: the comparison must be sensitive to the compensation and to the GQA head mapping.
    ReferenceOptions no_wc;
    no_wc.zero_compensation = true;
    EXPECT_GT(RelativeError(got, ReferenceForward(config, tensors, ids, no_wc)), 1e-2) << "zeroing Wc went unnoticed";
    ReferenceOptions wrong_heads;
    wrong_heads.wrong_gqa_mapping = true;
    EXPECT_GT(RelativeError(got, ReferenceForward(config, tensors, ids, wrong_heads)), 1e-2)
        << "a wrong GQA head mapping went unnoticed";
}

INSTANTIATE_TEST_SUITE_P(Groupings, UniAttnReferenceTest,
                         ::testing::Values(Grouping{2, 0, 6}, Grouping{3, 0, 6}, Grouping{2, 2, 6}, Grouping{3, 3, 6},
                                           Grouping{4, 1, 7}, Grouping{6, 0, 6}),
                         [](const auto& info) {
                             return "G" + std::to_string(info.param.g) + "B" + std::to_string(info.param.b) + "E" +
                                    std::to_string(info.param.e);
                         });

TEST(UniAttnTest, StandardModelMatchesFloat64Reference) {
    const RandomModelOptions o = SixLayerGqa();
    const ModelConfig config = testutil::MakeConfig(o);
    const auto tensors = testutil::MakeRandomTensors(config, DType::kF32, o.seed);
    TempDir tmp;
    ASSERT_TRUE(testutil::WriteModelDir(tmp.path(), config, tensors, DType::kF32).ok());
    const std::vector<int32_t> ids = Tokens(30, o.vocab_size, 9);
    EXPECT_LT(RelativeError(EngineLogits(tmp.path(), ids, 17, 5, 3), ReferenceForward(config, tensors, ids)), 1e-4);
}

// G = 1 (every layer in the range is an anchor) and B = E (an empty range) have no reuse layers: the
// engine must produce exactly the standard model's logits.
TEST(UniAttnTest, DegenerateGroupingsEqualTheStandardModelExactly) {
    RandomModelOptions o = SixLayerGqa();
    const ModelConfig standard = testutil::MakeConfig(o);
    const auto tensors = testutil::MakeRandomTensors(standard, DType::kF32, o.seed);
    TempDir tmp;
    ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("standard"), standard, tensors, DType::kF32).ok());
    const std::vector<int32_t> ids = Tokens(21, o.vocab_size, 3);
    const std::vector<float> base = EngineLogits(tmp.path() + "/standard", ids, 13, 6, 4);
    for (const Grouping gr : {Grouping{1, 0, 6}, Grouping{1, 2, 7}, Grouping{3, 2, 2}, Grouping{4, 6, 6}}) {
        ModelConfig c = standard;
        c.has_grouping = true;
        c.grouping_idx = gr.g;
        c.grouping_begin_idx = gr.b;
        c.grouping_end_idx = gr.e;
        ASSERT_TRUE(c.DeriveLayerKinds().ok());
        ASSERT_EQ(c.num_reuse_layers(), 0);
        const std::string dir =
            tmp.Sub("g" + std::to_string(gr.g) + "b" + std::to_string(gr.b) + "e" + std::to_string(gr.e));
        ASSERT_TRUE(testutil::WriteModelDir(dir, c, tensors, DType::kF32).ok());
        EXPECT_EQ(EngineLogits(dir, ids, 13, 6, 4), base) << "G=" << gr.g << " B=" << gr.b << " E=" << gr.e;
    }
}

TEST(UniAttnTest, LayerKindsFollowTheLlamaRule) {
    ModelConfig c;
    c.num_layers = 32;
    c.has_grouping = true;
    c.grouping_idx = 4;
    c.grouping_begin_idx = 16;
    c.grouping_end_idx = 33;
    ASSERT_TRUE(c.DeriveLayerKinds().ok());
    EXPECT_EQ(c.num_reuse_layers(), 12);
    EXPECT_EQ(c.layer_kinds[15], LayerKind::kNormal);
    EXPECT_EQ(c.layer_kinds[16], LayerKind::kAnchor);
    EXPECT_EQ(c.layer_kinds[17], LayerKind::kReuse);
    EXPECT_EQ(c.anchor_of[19], 16);
    EXPECT_EQ(c.layer_kinds[20], LayerKind::kAnchor);
    EXPECT_EQ(c.anchor_of[31], 28);
}

// The table of docs/uniattn.md §3, exactly.
TEST(UniAttnTest, KvBytesPerTokenMatchesTheDocsTable) {
    ModelConfig c;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 32;
    c.head_dim = 128;
    ASSERT_TRUE(c.DeriveLayerKinds().ok());
    EXPECT_EQ(c.KvBytesPerToken(2), 512 * 1024);
    c.has_grouping = true;
    c.grouping_idx = 4, c.grouping_begin_idx = 16, c.grouping_end_idx = 33;
    ASSERT_TRUE(c.DeriveLayerKinds().ok());
    EXPECT_EQ(c.KvBytesPerToken(2), 416 * 1024);
    EXPECT_EQ(c.DenseKvBytesPerToken(2), 512 * 1024);
    c.grouping_idx = 8, c.grouping_begin_idx = 0, c.grouping_end_idx = 32;
    ASSERT_TRUE(c.DeriveLayerKinds().ok());
    EXPECT_EQ(c.KvBytesPerToken(2), 288 * 1024);
    c.num_kv_heads = 8;  // Llama-3.1-8B, 4/16/33
    c.grouping_idx = 4, c.grouping_begin_idx = 16, c.grouping_end_idx = 33;
    ASSERT_TRUE(c.DeriveLayerKinds().ok());
    EXPECT_EQ(c.KvBytesPerToken(2), 104 * 1024);
}

// Refusals of docs/uniattn.md §5 and of impossible grouping keys: a clear message, never a silently different model.
TEST(UniAttnTest, InconsistentCheckpointsAreRefused) {
    RandomModelOptions o = SixLayerGqa();
    o.has_grouping = true;
    o.grouping_idx = 2, o.grouping_begin_idx = 2, o.grouping_end_idx = 6;  // reuse layers 3, 5
    const ModelConfig unified = testutil::MakeConfig(o);
    const auto tensors = testutil::MakeRandomTensors(unified, DType::kF32, o.seed);
    auto backend = MakeCpuBackend(1);
    TempDir tmp;
    auto expect_refused = [&](const std::string& dir, const std::string& needle) {
        auto m = Model::Load(dir, backend.get(), false);
        ASSERT_FALSE(m.ok()) << dir;
        EXPECT_NE(m.status().message().find(needle), std::string::npos) << m.status().message();
    };
    ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("ok"), unified, tensors, DType::kF32).ok());
    EXPECT_TRUE(Model::Load(tmp.path() + "/ok", backend.get(), false).ok());

    ModelConfig no_keys = unified;
    no_keys.has_grouping = false;
    ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("v2_without_keys"), no_keys, tensors, DType::kF32).ok());
    expect_refused(tmp.path() + "/v2_without_keys", "no grouping_idx");

    std::vector<NamedTensor> without_v2;
    for (const auto& t : tensors) {
        if (t.name.find("v2_proj") == std::string::npos) without_v2.push_back(t);
    }
    ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("keys_without_v2"), unified, without_v2, DType::kF32).ok());
    expect_refused(tmp.path() + "/keys_without_v2", "no v2_proj");

    std::vector<NamedTensor> wrong_set = without_v2;  // v2_proj for layer 3 only, and for layer 4 (an anchor)
    for (int l : {3, 4}) {
        NamedTensor t =
            *testutil::FindTensor(const_cast<std::vector<NamedTensor>&>(tensors), LayerTensorName(3, "v2_proj.weight"));
        t.name = LayerTensorName(l, "v2_proj.weight");
        wrong_set.push_back(t);
    }
    ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("wrong_set"), unified, wrong_set, DType::kF32).ok());
    expect_refused(tmp.path() + "/wrong_set", "{3,4}");

    // Impossible keys in config.json: G < 1, B > E, E > L + 1.
    const std::vector<std::pair<Grouping, std::string>> bad = {
        {{0, 0, 6}, "grouping_idx (G) must be >= 1"},
        {{2, 5, 3}, "is greater than grouping_end_idx"},
        {{2, 0, 8}, "exceeds num_hidden_layers + 1"},
    };
    for (const auto& [gr, needle] : bad) {
        OrderedJson cfg = no_keys.ToJson();
        cfg["grouping_idx"] = gr.g;
        cfg["grouping_begin_idx"] = gr.b;
        cfg["grouping_end_idx"] = gr.e;
        const std::string dir = tmp.Sub("bad" + std::to_string(gr.g) + std::to_string(gr.b) + std::to_string(gr.e));
        ASSERT_TRUE(testutil::WriteModelDir(dir, no_keys, without_v2, DType::kF32).ok());
        ASSERT_TRUE(WriteFile(dir + "/config.json", DumpJson(cfg)).ok());
        expect_refused(dir, needle);
    }
}

// The KV cache holds no K plane for reuse layers, so the same bytes hold more blocks.
TEST(UniAttnTest, KvCacheHasNoKeysForReuseLayers) {
    RandomModelOptions o = SixLayerGqa();
    o.has_grouping = true;
    o.grouping_idx = 3, o.grouping_begin_idx = 0, o.grouping_end_idx = 6;  // reuse 1, 2, 4, 5
    const ModelConfig c = testutil::MakeConfig(o);
    auto backend = MakeCpuBackend(1);
    auto kv = KvCache::Create(backend.get(), c, 16, 4);
    ASSERT_TRUE(kv.ok());
    for (int l = 0; l < c.num_layers; ++l) EXPECT_EQ((*kv)->HasK(l), c.layer_kinds[l] != LayerKind::kReuse) << l;
    const int64_t per_token = c.KvBytesPerToken(4);
    EXPECT_EQ(per_token, 4LL * 2 * 8 * (2 * 2 + 4));
    EXPECT_EQ((*kv)->bytes_per_block(), per_token * 16);
    const ModelConfig dense = testutil::MakeConfig(SixLayerGqa());
    EXPECT_GT(BlockManager::NumBlocksForBytes(c, DType::kF32, 16, 1 << 20),
              BlockManager::NumBlocksForBytes(dense, DType::kF32, 16, 1 << 20));
}

// uniattn-convert unify: the checkpoint reloads, --drop-unused-qk drops exactly the reuse layers' Q/K,
// and calibrated compensation brings the unified model closer to the original than none.
TEST(UniAttnTest, UnifiedCheckpointReloadsAndCalibrationHelps) {
    RandomModelOptions o = SixLayerGqa();
    o.seed = 21;
    const ModelConfig standard = testutil::MakeConfig(o);
    const auto tensors = testutil::MakeRandomTensors(standard, DType::kF32, o.seed);
    TempDir tmp;
    const std::string orig = tmp.Sub("orig");
    ASSERT_TRUE(testutil::WriteModelDir(orig, standard, tensors, DType::kF32).ok());
    // A calibration text is tokenized, so build a corpus file of token ids instead: calibrate on samples.
    UnifyOptions u;
    u.model_dir = orig;
    u.group = 3, u.begin = 0, u.end = 6;
    u.drop_unused_qk = true;
    u.out_dir = tmp.path() + "/none";
    u.calib = "none";
    ASSERT_TRUE(Unify(u).ok());
    u.out_dir = tmp.path() + "/cal";
    u.calib = "";
    u.calib_samples = 8;
    u.calib_len = 48;
    auto report = Unify(u);
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_EQ(report->reuse_layers, (std::vector<int>{1, 2, 4, 5}));
    for (double r : report->residual_after) EXPECT_LT(r, 1.0);

    auto set = TensorSet::OpenDir(tmp.path() + "/cal");
    ASSERT_TRUE(set.ok());
    EXPECT_EQ(set->Find(LayerTensorName(1, "self_attn.q_proj.weight")), nullptr);
    EXPECT_NE(set->Find(LayerTensorName(3, "self_attn.q_proj.weight")), nullptr);
    EXPECT_NE(set->Find(LayerTensorName(4, "v2_proj.weight")), nullptr);
    EXPECT_EQ(set->Find(LayerTensorName(3, "v2_proj.weight")), nullptr);

    const std::vector<int32_t> ids = Tokens(40, o.vocab_size, 77);
    const Matrix want = ReferenceForward(standard, tensors, ids);
    const double err_none = RelativeError(EngineLogits(tmp.path() + "/none", ids, 40, 40, 16), want);
    const double err_cal = RelativeError(EngineLogits(tmp.path() + "/cal", ids, 40, 40, 16), want);
    EXPECT_LT(err_cal, err_none) << "calibration did not bring logits closer to the original";
}

// uniattn-convert unify on the other families: a tiny Qwen3 (q/k norm, q/k/v/o biases) and a tiny Llama-3.1
// (rope_scaling llama3). The checkpoint keeps the family's config keys, drops the reuse layers' Q/K with their
// biases and norms but keeps their V bias, reloads and computes exactly its own float64 reference; the
// closed-form fit shrinks every reuse layer's gap on its calibration tokens. (Whether that also brings the
// logits of unrelated random tokens closer to the original depends on the seed with random weights: with the
// plain Llama layout seeds 21, 24 and 25 did and 23 did not, so it is not asserted here.)
TEST(UniAttnTest, UnifyKeepsTheFamily) {
    struct Case {
        const char* name;
        RandomModelOptions o;
    };
    std::vector<Case> cases;
    RandomModelOptions qwen3 = SixLayerGqa();
    qwen3.architecture = "Qwen3ForCausalLM";
    qwen3.attention_bias = true;
    qwen3.head_dim = qwen3.hidden_size / qwen3.num_heads;  // Wc joins the residual: Hq·hd == hidden
    qwen3.seed = 22;
    cases.push_back({"qwen3", qwen3});
    RandomModelOptions llama31 = SixLayerGqa();
    llama31.rope_theta = 500000.0;
    llama31.rope_scaling.type = RopeType::kLlama3;
    llama31.rope_scaling.factor = 8.0;
    llama31.rope_scaling.low_freq_factor = 1.0;
    llama31.rope_scaling.high_freq_factor = 4.0;
    llama31.rope_scaling.original_max_position_embeddings = 32;
    llama31.seed = 23;
    cases.push_back({"llama3.1", llama31});
    for (const Case& c : cases) {
        SCOPED_TRACE(c.name);
        const ModelConfig standard = testutil::MakeConfig(c.o);
        const auto tensors = testutil::MakeRandomTensors(standard, DType::kF32, c.o.seed);
        TempDir tmp;
        const std::string orig = tmp.Sub("orig");
        ASSERT_TRUE(testutil::WriteModelDir(orig, standard, tensors, DType::kF32).ok());
        UnifyOptions u;
        u.model_dir = orig;
        u.group = 3, u.begin = 0, u.end = 6;  // reuse layers 1, 2, 4, 5
        u.drop_unused_qk = true;
        u.out_dir = tmp.path() + "/none";
        u.calib = "none";
        ASSERT_TRUE(Unify(u).ok());
        u.out_dir = tmp.path() + "/cal";
        u.calib = "";
        u.calib_samples = 8;
        u.calib_len = 40;
        auto report = Unify(u);
        ASSERT_TRUE(report.ok()) << report.status().ToString();
        ASSERT_EQ(report->reuse_layers, (std::vector<int>{1, 2, 4, 5}));
        for (double r : report->residual_after) EXPECT_LT(r, 1.0);

        for (const char* out : {"none", "cal"}) {
            SCOPED_TRACE(out);
            const std::string dir = tmp.path() + "/" + out;
            auto cfg = Model::LoadConfig(dir);
            ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
            EXPECT_EQ(cfg->architecture, standard.architecture);
            EXPECT_EQ(cfg->qkv_bias, standard.qkv_bias);
            EXPECT_EQ(cfg->o_bias, standard.o_bias);
            EXPECT_EQ(cfg->qk_norm, standard.qk_norm);
            EXPECT_EQ(cfg->RopeInvFreq(), standard.RopeInvFreq());
            auto set = TensorSet::OpenDir(dir);
            ASSERT_TRUE(set.ok());
            for (const char* suffix : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.q_proj.bias",
                                       "self_attn.k_proj.bias", "self_attn.q_norm.weight", "self_attn.k_norm.weight"}) {
                EXPECT_EQ(set->Find(LayerTensorName(1, suffix)), nullptr) << suffix;  // reuse: dropped
                const bool family_has = (standard.qkv_bias || std::string(suffix).find("bias") == std::string::npos) &&
                                        (standard.qk_norm || std::string(suffix).find("norm") == std::string::npos);
                EXPECT_EQ(set->Find(LayerTensorName(3, suffix)) != nullptr, family_has) << suffix;  // anchor: kept
            }
            EXPECT_EQ(set->Find(LayerTensorName(4, "self_attn.v_proj.bias")) != nullptr, standard.qkv_bias);

            // The unified checkpoint is computed exactly: its own float64 reference.
            std::vector<NamedTensor> unified_tensors;
            for (const std::string& name : set->Names()) {
                const TensorView* v = set->Find(name);
                NamedTensor t{name, v->shape, std::vector<float>(static_cast<size_t>(v->numel()))};
                v->ToFloat(t.data.data());
                unified_tensors.push_back(std::move(t));
            }
            const std::vector<int32_t> ids = Tokens(40, c.o.vocab_size, 78);
            const std::vector<float> got = EngineLogits(dir, ids, 25, 6, 4);
            EXPECT_LT(RelativeError(got, ReferenceForward(*cfg, unified_tensors, ids)), 1e-4);
        }
    }
}

}  // namespace
}  // namespace uniattn
