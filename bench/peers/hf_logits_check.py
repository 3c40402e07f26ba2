#!/usr/bin/env python3
"""Whole-model logits of the engine (CUDA and CPU backends) against transformers, for every model family.

Runs on a GPU machine with PyTorch + transformers (the device image has both) and a built
`posttrain_engine_logits` (tests/posttrain/engine_logits.cc). Models (--cases picks some; default all):

  stories15M   the default model's directory (real weights; MHA, head_dim 48, tied embeddings)
  random GQA   a seeded random LlamaForCausalLM written by transformers' own save_pretrained
               (8 query heads over 2 KV heads, head_dim 32, rope_theta 500000, untied lm_head), so the
               check also covers the config.json and safetensors names transformers writes
  llama3 rope, linear rope
               the random GQA Llama with rope_scaling llama3 (factor 8, low 1, high 4, original 128: every
               regime of the rule among head_dim 32's frequencies at 300 positions) and linear (factor 4)
  mistral window
               MistralForCausalLM with sliding_window 48, shorter than the 300-token prompt (transformers
               runs with attn_implementation="eager", which applies the window mask i - W < j <= i)
  qwen2        Qwen2ForCausalLM: q/k/v biases (random, not transformers' zero init), tied embeddings
  qwen3        Qwen3ForCausalLM: q_norm/k_norm (random weights), head_dim 48 with hidden 256 / 8 heads = 32
Every random model's weights are drawn wider than transformers' init, biases and q/k norm weights included,
so that dropping any of them would move the logits far past the bounds.

For each: transformers in float32 on the GPU (TF32 off) gives the reference logits of one token sequence;
the engine computes the same sequence whole (prefill), one token at a time (decode over the paged cache) and
in chunks of 37 (chunked prefill across KV blocks), on `cuda-f32` (fp32 weights and KV), `cuda` (fp16, the
default) and `cpu`. Reported per run: the largest per-row relative L2 error ||engine - hf|| / ||hf|| and the
share of rows whose argmax agrees. Exit status 1 if a bound is exceeded (BOUNDS below).

  python3 bench/peers/hf_logits_check.py --engine build/bin/posttrain_engine_logits \
      --stories models/stories15M --work /tmp/hfcheck [--cases stories15M,qwen3] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

# Largest per-row relative L2 error allowed. fp32 weights and KV: 1e-4. fp16 weights and KV (the CUDA default):
# 5e-3 where a GEMM has at most 64 rows (activations kept fp32-accurate as [x_hi; x_lo]), 2e-2 for a whole
# prompt in one chunk, whose GEMMs round the activations to fp16 (measured 1.34e-2 on stories15M, H200).
BOUNDS = {"cuda-f32": 1e-4, "cpu": 1e-4, "cuda": 5e-3}
PREFILL_FP16_BOUND = 2e-2


def hf_logits(model_dir, tokens):
    # Eager attention: the reference softmax, and the one that applies Mistral's sliding-window mask in every
    # transformers version (SDPA and flash paths have differed in how they build it).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model = model.cuda().eval()
    with torch.no_grad():
        out = model(torch.tensor([tokens], device="cuda")).logits[0].float().cpu().numpy()
    del model
    torch.cuda.empty_cache()
    return out


def engine_logits(engine, model_dir, tokens, chunk, backend, work):
    tok_file = os.path.join(work, "tokens.bin")
    out_file = os.path.join(work, "logits.bin")
    np.asarray(tokens, dtype="<i4").tofile(tok_file)
    subprocess.run([engine, model_dir, tok_file, out_file, str(chunk), backend], check=True)
    return np.fromfile(out_file, dtype="<f4").reshape(len(tokens), -1)


def compare(got, ref):
    err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    agree = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))
    return float(err.max()), int(err.argmax()), agree


def set_rope(cfg, theta, scaling=None):
    """rope_theta and rope_scaling in the spelling of the installed transformers (5: rope_parameters)."""
    if getattr(cfg, "rope_parameters", None) is not None:  # transformers 5
        cfg.rope_parameters = dict(scaling or {"rope_type": "default"}, rope_theta=theta)
    else:
        cfg.rope_theta = theta
        cfg.rope_scaling = scaling


def randomize(model):
    """Weights wider than the default init, so attention is not near-uniform; biases and q/k norm weights
    (zeros and ones by default) random too, so that an engine ignoring them fails the check."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08 if "embed" not in name else 1.0)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.3)
            elif "q_norm" in name or "k_norm" in name:
                p.uniform_(0.5, 1.5)


def random_gqa(path, seed, scaling=None):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
    set_rope(cfg, 500000.0, scaling)
    model = LlamaForCausalLM(cfg).float()
    randomize(model)
    model.save_pretrained(path, safe_serialization=True)
    return cfg


def random_family(path, seed, family):
    """A seeded random Mistral / Qwen2 / Qwen3 model saved by transformers itself."""
    import transformers
    torch.manual_seed(seed)
    common = dict(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6)
    if family == "mistral":
        cfg = transformers.MistralConfig(sliding_window=48, tie_word_embeddings=False, **common)
        cls = transformers.MistralForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(use_sliding_window=False, tie_word_embeddings=True, **common)
        cls = transformers.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=48, attention_bias=False, use_sliding_window=False,
                                       tie_word_embeddings=True, **common)
        cls = transformers.Qwen3ForCausalLM
    else:
        raise ValueError(family)
    set_rope(cfg, 1000000.0 if family != "mistral" else 10000.0)
    model = cls(cfg).float()
    randomize(model)
    model.save_pretrained(path, safe_serialization=True)
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True)
    ap.add_argument("--stories", default="models/stories15M")
    ap.add_argument("--work", default="/tmp/hfcheck")
    ap.add_argument("--backends", default="cuda-f32,cuda,cpu")
    ap.add_argument("--json", default="")
    ap.add_argument("--cases", default="",
                    help="comma-separated subset of: stories15M, gqa, llama3, linear, mistral, qwen2, qwen3 "
                         "(default: all)")
    args = ap.parse_args()
    wanted = set(args.cases.split(",")) if args.cases else None
    os.makedirs(args.work, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")

    rng = np.random.default_rng(7)
    cases = []
    # stories15M: the oracle prompt and its greedy continuation, then seeded random ids up to 200 tokens.
    story = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889]
    story += [int(t) for t in rng.integers(3, 32000, 200 - len(story))]
    if os.path.isdir(args.stories) and (wanted is None or "stories15M" in wanted):
        cases.append(("stories15M", args.stories, story))

    def random_tokens():
        return [1] + [int(t) for t in rng.integers(3, 1000, 299)]

    def add(key, name, make):
        tokens = random_tokens()  # drawn whether or not the case runs, so each case's tokens stay the same
        if wanted is not None and key not in wanted:
            return
        model_dir = os.path.join(args.work, key)
        make(model_dir)
        with open(os.path.join(model_dir, "config.json")) as f:
            print(f"{name} config.json keys written by transformers:", sorted(json.load(f).keys()))
        cases.append((name, model_dir, tokens))

    add("gqa", "random GQA 8/2 heads", lambda d: random_gqa(d, seed=11))
    add("llama3", "llama3 rope", lambda d: random_gqa(d, seed=12, scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128}))
    add("linear", "linear rope x4", lambda d: random_gqa(d, seed=13, scaling={"rope_type": "linear", "factor": 4.0}))
    add("mistral", "mistral window 48", lambda d: random_family(d, 14, "mistral"))
    add("qwen2", "qwen2 qkv bias", lambda d: random_family(d, 15, "qwen2"))
    add("qwen3", "qwen3 qk norm hd48", lambda d: random_family(d, 16, "qwen3"))

    results, failed = [], False
    for name, model_dir, tokens in cases:
        ref = hf_logits(model_dir, tokens)
        for backend in args.backends.split(","):
            for chunk in (0, 1, 37):
                got = engine_logits(args.engine, model_dir, tokens, chunk, backend, args.work)
                err, row, agree = compare(got, ref)
                bound = PREFILL_FP16_BOUND if backend == "cuda" and chunk == 0 else BOUNDS[backend]
                ok = err <= bound
                failed |= not ok
                mode = {0: "prefill", 1: "decode", 37: "chunks of 37"}[chunk]
                print(f"{name:22s} {backend:9s} {mode:13s} tokens {len(tokens):4d}  max rel L2 {err:.3g} (row {row})"
                      f"  argmax agree {agree:.4f}  bound {bound:g}  {'ok' if ok else 'FAIL'}")
                results.append({"model": name, "backend": backend, "mode": mode, "tokens": len(tokens),
                                "max_rel_l2": err, "row": row, "argmax_agree": agree, "ok": ok})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print("hf_logits_check:", "FAILED" if failed else "all within bounds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
