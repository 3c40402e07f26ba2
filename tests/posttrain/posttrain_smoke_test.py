#!/usr/bin/env python3
"""CI smoke test of tools/posttrain/ (ctest posttrain_smoke, label cpu):
1. writes a tiny random UniAttn model (5 layers, G/B/E 3/1/6: normal, anchor, reuse, reuse, anchor; GQA 4 query
   heads over 2 KV heads; untied embeddings; random Wc) with the tool's own safetensors writer;
2. post-trains it for a few steps on the CPU (distillation from the same model without grouping), and checks
   that the validation loss goes down in each stage;
3. loads the result (and the input) in the engine (posttrain_engine_logits: uniattn::Model + Session, whole
   prefill, chunked prefill and token-by-token decode) and checks that the engine's logits match the PyTorch
   model's, computed in float64, within 1e-4 relative (max |diff| / max |logit|);
4. controls: the same comparison with Wc zeroed or with the wrong GQA head mapping must fail by far, so the
   check is sensitive to both.
Fails (does not skip) when torch is missing."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(ROOT, "tools", "posttrain")
sys.path.insert(0, TOOL)

try:
    import numpy as np
    import torch
except ImportError as e:
    sys.exit(f"FAIL: {e}: tools/posttrain needs PyTorch for {sys.executable}; run scripts/setup.sh "
             "(it installs Debian's python3-torch and python3-numpy)")

import safetensors_io  # noqa: E402
from uniattn_model import Config, KVCache, build_model, read_config, load_tensors  # noqa: E402

TOLERANCE = 1e-4

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "torch_dtype": "float32", "grouping_idx": 3, "grouping_begin_idx": 1, "grouping_end_idx": 6,
}


# The families beside Llama (docs/models.md), each with the grouping above: the keys that change the math.
FAMILY_CONFIGS = {
    "qwen3": dict(CONFIG, architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=True,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen2": dict(CONFIG, architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                  sliding_window=32, max_window_layers=5),
    "mistral": dict(CONFIG, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=9),
    "llama3-rope": dict(CONFIG, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
}


def write_tiny_model(path, seed, config=CONFIG):
    """Random weights, scaled so that attention is far from uniform (a wrong head mapping must show)."""
    g = torch.Generator().manual_seed(seed)
    c = Config(config)
    d, hd, hq, hkv, ff, v = 32, 8, 4, 2, 48, 97

    def rnd(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    t = {"model.embed_tokens.weight": rnd(v, d, scale=1.0), "model.norm.weight": 1 + rnd(d, scale=0.1),
         "lm_head.weight": rnd(v, d, scale=d ** -0.5)}
    for l in range(5):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + rnd(d, scale=0.1)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(d, scale=0.1)
        t[p + "self_attn.q_proj.weight"] = rnd(hq * hd, d, scale=2.0 * d ** -0.5)
        t[p + "self_attn.k_proj.weight"] = rnd(hkv * hd, d, scale=2.0 * d ** -0.5)
        t[p + "self_attn.v_proj.weight"] = rnd(hkv * hd, d, scale=d ** -0.5)
        t[p + "self_attn.o_proj.weight"] = rnd(d, hq * hd, scale=(hq * hd) ** -0.5)
        t[p + "mlp.gate_proj.weight"] = rnd(ff, d, scale=d ** -0.5)
        t[p + "mlp.up_proj.weight"] = rnd(ff, d, scale=d ** -0.5)
        t[p + "mlp.down_proj.weight"] = rnd(d, ff, scale=ff ** -0.5)
        if c.kinds[l] == "reuse":
            t[p + "v2_proj.weight"] = rnd(hq * hd, d, scale=0.5 * d ** -0.5)
        for proj, n in (("q_proj", hq * hd), ("k_proj", hkv * hd), ("v_proj", hkv * hd)):
            if c.qkv_bias:
                t[p + f"self_attn.{proj}.bias"] = rnd(n, scale=0.5)
        if c.o_bias:
            t[p + "self_attn.o_proj.bias"] = rnd(d, scale=0.5)
        if c.qk_norm:
            t[p + "self_attn.q_norm.weight"] = 1 + rnd(hd, scale=0.3)
            t[p + "self_attn.k_norm.weight"] = 1 + rnd(hd, scale=0.3)
    if c.tie_word_embeddings:
        del t["lm_head.weight"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    safetensors_io.write_file(os.path.join(path, "model.safetensors"), t, "F32")
    return t


def check_safetensors_roundtrip(work, tensors):
    for dtype, tdtype in (("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16)):
        path = os.path.join(work, f"roundtrip-{dtype}.safetensors")
        safetensors_io.write_file(path, tensors, dtype)
        back, _ = safetensors_io.read_file(path)
        assert set(back) == set(tensors), dtype
        for n, x in tensors.items():
            assert back[n].dtype == tdtype, (dtype, n, back[n].dtype)
            assert torch.equal(back[n].float(), x.to(tdtype).float()), (dtype, n)
    print("safetensors F32/F16/BF16 round trip: ok")


def check_kv_cache(model_dir):
    """The sampler's KV-cache path (reuse layers included) gives the whole-sequence forward's logits."""
    m = build_model(read_config(model_dir), load_tensors(model_dir)).double()
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = m(tokens)
        cache = KVCache(m.config.num_layers, 20)
        parts = [m(tokens[:, s:e], cache=cache) for s, e in ((0, 7), (7, 8), (8, 20))]
    err = rel_err(torch.cat(parts, dim=1), whole)
    print(f"KV-cache forward vs whole forward: max rel err {err:.2e}")
    if err > 1e-10:
        sys.exit(f"FAIL: the KV-cache forward differs from the whole forward by {err:.2e}")


def engine_logits(binary, model_dir, tokens, work, chunk):
    tok_path = os.path.join(work, "tokens.bin")
    out_path = os.path.join(work, f"logits-{chunk}.bin")
    np.asarray(tokens, dtype="<i4").tofile(tok_path)
    r = subprocess.run([binary, model_dir, tok_path, out_path, str(chunk)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: engine on {model_dir}: {r.stderr.strip()}")
    return torch.from_numpy(np.fromfile(out_path, dtype="<f4").astype(np.float64)).view(len(tokens), -1)


def torch_logits(model_dir, tokens, **controls):
    m = build_model(read_config(model_dir), load_tensors(model_dir)).double()
    with torch.no_grad():
        return m(torch.tensor([tokens]), **controls)[0]


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def compare(binary, model_dir, tokens, work, label):
    ref = torch_logits(model_dir, tokens)
    worst = 0.0
    for chunk in (len(tokens), 7, 1):
        err = rel_err(engine_logits(binary, model_dir, tokens, work, chunk), ref)
        print(f"{label}: engine vs PyTorch float64, chunk {chunk}: max rel err {err:.2e}")
        worst = max(worst, err)
    if worst > TOLERANCE:
        sys.exit(f"FAIL: {label}: engine and PyTorch logits differ by {worst:.2e} relative (tolerance {TOLERANCE})")
    eng = engine_logits(binary, model_dir, tokens, work, len(tokens))
    for control in ("zero_wc", "wrong_gqa"):
        err = rel_err(eng, torch_logits(model_dir, tokens, **{control: True}))
        print(f"{label}: control {control}: rel err {err:.2e} (must exceed {100 * TOLERANCE:.0e})")
        if err < 100 * TOLERANCE:
            sys.exit(f"FAIL: {label}: the comparison does not notice {control} ({err:.2e})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engine-logits", required=True, help="the posttrain_engine_logits binary")
    p.add_argument("--work", required=True, help="scratch directory (emptied)")
    args = p.parse_args()
    start = time.time()
    torch.set_num_threads(1)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    tiny, out, stage1 = (os.path.join(args.work, n) for n in ("tiny", "tiny-posttrained", "tiny-stage1"))
    tensors = write_tiny_model(tiny, seed=7)
    check_safetensors_roundtrip(args.work, tensors)
    check_kv_cache(tiny)

    cmd = [sys.executable, os.path.join(TOOL, "posttrain.py"), "--model", tiny, "--out", out,
           "--save-stage1", stage1, "--device", "cpu", "--threads", "1", "--seed", "3",
           "--stage1-steps", "15", "--stage2-steps", "15", "--batch", "8", "--seq-len", "32",
           "--samples", "96", "--val-samples", "16", "--sample-batch", "64",
           "--lr1", "1e-2", "--lr2", "3e-3", "--log-every", "5", "--temperature", "1.0,0.7", "--ema", "0.8"]
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"FAIL: posttrain.py exited with {r.returncode}")
    with open(os.path.join(out, "posttrain.json")) as f:
        s = json.load(f)
    before, after1, after2 = (s[k]["val_loss"] for k in ("before", "after_stage1", "after_stage2"))
    print(f"validation KL: before {before:.4f}, after stage 1 {after1:.4f}, after stage 2 {after2:.4f}")
    if not (after1 < before and after2 < after1):
        sys.exit("FAIL: the validation loss did not go down in each stage")
    # --ema: the written weights are the moving average, not the last step's (their losses differ).
    raw2 = s["after_stage2_without_ema"]["val_loss"]
    print(f"stage 2 without the moving average: {raw2:.4f}")
    if raw2 == after2:
        sys.exit("FAIL: --ema did not change the final weights")

    # The written checkpoint keeps the input's format: same keys, v2_proj exactly for the reuse layers.
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    for k in ("grouping_idx", "grouping_begin_idx", "grouping_end_idx"):
        assert cfg[k] == CONFIG[k], k
    names = set(load_tensors(out))
    assert names == set(tensors), sorted(names ^ set(tensors))
    trained = load_tensors(out)
    moved = [n for n in tensors if not torch.equal(trained[n], tensors[n])]
    assert "model.layers.2.v2_proj.weight" in moved and "model.layers.0.mlp.up_proj.weight" in moved, moved
    stage1_moved = [n for n, t in load_tensors(stage1).items() if not torch.equal(t, tensors[n])]
    assert sorted(stage1_moved) == ["model.layers.2.v2_proj.weight", "model.layers.3.v2_proj.weight"], stage1_moved

    g = torch.Generator().manual_seed(11)
    tokens = [1] + torch.randint(0, 97, (44,), generator=g).tolist()
    compare(args.engine_logits, tiny, tokens, args.work, "input")
    compare(args.engine_logits, out, tokens, args.work, "post-trained")

    # Every family: the PyTorch model (biases, q/k norm, window, RoPE scaling) is the engine's, and post-training
    # runs on it and writes a checkpoint the engine loads and agrees with.
    for name, config in FAMILY_CONFIGS.items():
        fdir, fout = os.path.join(args.work, name), os.path.join(args.work, name + "-posttrained")
        ftensors = write_tiny_model(fdir, seed=13, config=config)
        check_kv_cache(fdir)
        compare(args.engine_logits, fdir, tokens, args.work, name)
        cmd = [sys.executable, os.path.join(TOOL, "posttrain.py"), "--model", fdir, "--out", fout, "--device", "cpu",
               "--threads", "1", "--seed", "3", "--stage1-steps", "4", "--stage2-steps", "4", "--batch", "4",
               "--seq-len", "32", "--samples", "32", "--val-samples", "8", "--sample-batch", "32", "--lr1", "1e-2",
               "--lr2", "3e-3", "--log-every", "4"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"FAIL: posttrain.py on {name} exited with {r.returncode}: {r.stderr[-2000:]}")
        assert set(load_tensors(fout)) == set(ftensors), sorted(set(load_tensors(fout)) ^ set(ftensors))
        compare(args.engine_logits, fout, tokens, args.work, name + " post-trained")
    print(f"PASS ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
