#!/usr/bin/env python3
"""PyTorch + transformers peer for uniattn-bench: LlamaForCausalLM of the same shape (bench/configs/*.json),
random fp16 weights on the GPU, sdpa attention, a static KV cache, decode steps timed with CUDA events, in
eager mode and (with --compile) torch.compile(mode="reduce-overhead"), which replays CUDA graphs (falling back
to torch.compile's default mode if that fails).

    python3 bench/peers/torch_llama.py --config bench/configs/llama2-7b.json --decode 1x512,16x4096 \
        [--steps 20] [--warmup 3] [--compile] [--json out.json]

The static cache is filled with random values (decode cost does not depend on them) instead of a prefill;
each step decodes one token per sequence at position ctx + i, so attention covers ctx + i + 1 positions
(sdpa over a static cache reads the whole max_cache_len = ctx + warmup + steps + 1 slots)."""

import argparse
import inspect
import json
import math
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def make_cache(config, batch, max_len, device, dtype):
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": max_len}
    for name, value in (("max_batch_size", batch), ("batch_size", batch), ("device", device), ("dtype", dtype)):
        if name in params:
            kwargs[name] = value
    return StaticCache(**kwargs)


def randomize_cache(cache):
    """Random K/V in every layer's static tensors (names differ across transformers versions)."""
    filled = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    t.uniform_(-1, 1)
                    filled += 1
    for name in ("key_cache", "value_cache"):
        for t in getattr(cache, name, []) or []:
            if isinstance(t, torch.Tensor):
                t.uniform_(-1, 1)
                filled += 1
    return filled


def cache_tensors(cache):
    out = []
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
    for name in ("key_cache", "value_cache"):
        out.extend(t for t in (getattr(cache, name, []) or []) if isinstance(t, torch.Tensor))
    return out


def time_decode(model, config, batch, ctx, steps, warmup, mode):
    """Median ms per decode step; mode is "eager" or a torch.compile mode."""
    device, dtype = "cuda", torch.float16
    max_len = ctx + warmup + steps + 2
    cache = make_cache(config, batch, max_len, device, dtype)
    tok = torch.randint(0, config.vocab_size, (batch, 1), device=device)

    def step(forward, i):
        pos = torch.tensor([ctx + i], device=device, dtype=torch.long)
        out = forward(input_ids=tok, position_ids=pos.expand(batch, 1), cache_position=pos,
                      past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1:].argmax(-1).clone()

    with torch.inference_mode():
        # One eager step first: transformers allocates the static cache's tensors lazily, and they must
        # exist (at fixed addresses) before a compiled CUDA-graph region uses them.
        tok = step(model.forward, -1)
        filled = randomize_cache(cache)
        forward = model.forward
        if mode != "eager":
            for t in cache_tensors(cache):
                torch._dynamo.mark_static_address(t)
            forward = torch.compile(model.forward, mode=mode, fullgraph=False, dynamic=False)
        times = []
        compile_s = 0.0
        for i in range(warmup + steps):
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            tok = step(forward, i)
            end.record()
            torch.cuda.synchronize()
            if i == 0:
                compile_s = time.perf_counter() - t0
            if i >= warmup:
                times.append(start.elapsed_time(end))
    del cache
    torch.cuda.empty_cache()
    return statistics.median(times), compile_s, filled


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/configs/llama2-7b.json")
    ap.add_argument("--decode", default="1x512")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = json.load(f)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    init_s = time.perf_counter() - t0
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}, "
          f"weights {weight_bytes / 1e9:.2f} GB (init {init_s:.1f} s)", flush=True)

    results = []
    for case in args.decode.split(","):
        batch, ctx = (int(x) for x in case.split("x"))
        modes = ["eager"] + (["reduce-overhead"] if args.compile else [])
        for mode in modes:
            try:
                ms, first_s, filled = time_decode(model, config, batch, ctx, args.steps, args.warmup, mode)
            except Exception as e:  # report and go on: one failed mode must not hide the others
                print(f"  decode B={batch} ctx={ctx} {mode}: FAILED {str(e)[:300]!r}", flush=True)
                if mode == "reduce-overhead":
                    modes.append("default")  # torch.compile without CUDA graphs
                continue
            print(f"  decode B={batch:<4} ctx={ctx:<6} {mode:<16} {ms:9.3f} ms/step {batch / ms * 1e3:10.1f} tok/s"
                  f"  (first step {first_s:.1f} s, {filled} cache tensors randomised)", flush=True)
            results.append({"batch": batch, "context": ctx, "mode": mode, "ms_per_step": ms,
                            "output_tokens_per_s": batch / ms * 1e3, "first_step_s": first_s})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "config": args.config,
                       "weight_bytes": weight_bytes, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
