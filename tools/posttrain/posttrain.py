#!/usr/bin/env python3
"""Post-training of UniAttn models (the paper's two stages), writing a checkpoint uniattn-serve serves.

    /usr/bin/python3 tools/posttrain/posttrain.py --model DIR --out DIR [options]

Input: a model directory in the project's format: a UniAttn checkpoint (uniattn-convert unify), or a
standard one with --group/--begin/--end (Wc then starts in closed form, docs/uniattn.md §6, or at zero).
Stage 1 trains only the compensations Wc (v2_proj); stage 2 trains every weight. Loss: distillation, the
KL divergence from the original model's next-token distribution to the unified model's, on sequences the
original samples itself (default); or cross-entropy on a text corpus (--text; documents split at blank
lines, each BOS + tokens), optionally distilled on that text instead (--text --distill).
The original (teacher) is --teacher DIR, else the input itself when it is standard, else the input with its
grouping removed: exact only for a checkpoint straight out of `uniattn-convert unify` without
--drop-unused-qk (it keeps every original weight); pass --teacher for anything already post-trained.
Runs on CUDA when present (bf16 autocast by default), else on the CPU (float32). See README.md.
"""
import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import calibrate  # noqa: E402
import data  # noqa: E402
import safetensors_io  # noqa: E402
from uniattn_model import build_model, check_uniattn_tensors, read_config, load_tensors, save_checkpoint  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--model", required=True, help="model directory (UniAttn, or standard with --group/--begin/--end)")
    io.add_argument("--out", required=True, help="output directory (the post-trained UniAttn checkpoint)")
    io.add_argument("--group", type=int, help="G: unify (or re-unify) the input with this grouping")
    io.add_argument("--begin", type=int, help="B (with --group)")
    io.add_argument("--end", type=int, help="E (with --group)")
    io.add_argument("--wc-init", default="auto",
                    help="Wc at the start: checkpoint | closed-form | zeros | FILE.safetensors holding "
                         "model.layers.{l}.v2_proj.weight; auto = the checkpoint's when it has them, else closed-form")
    io.add_argument("--teacher", help="the original model's directory (default: see above)")
    io.add_argument("--save-stage1", metavar="DIR", help="also write the checkpoint after stage 1")
    io.add_argument("--save-dtype", default="f32", help="dtype of the written weights: f32, f16, bf16")
    io.add_argument("--summary", help="write a JSON summary here (default OUT/posttrain.json)")

    d = p.add_argument_group("data and loss")
    d.add_argument("--text", help="training corpus (UTF-8; documents split at blank lines)")
    d.add_argument("--distill", action="store_true", help="with --text: KL to the teacher on the text, not cross-entropy")
    d.add_argument("--samples", type=int, default=0,
                   help="sequences to sample from the teacher when no --text (0: batch * max(stage steps), at most 16384)")
    d.add_argument("--sample-batch", type=int, default=256, help="sequences sampled at once")
    d.add_argument("--temperature", default="1.0",
                   help="sampling temperature; a comma list (1.0,0.7) splits the samples evenly among them")
    d.add_argument("--val-samples", type=int, default=32, help="held-apart sequences for the validation loss")
    d.add_argument("--eval-text", help="also report perplexity on this text (uniattn-eval's protocol) after each stage")
    d.add_argument("--calib-samples", type=int, default=64, help="sequences for closed-form Wc")
    d.add_argument("--ridge", type=float, default=1e-3, help="closed-form ridge, relative to the mean diagonal")

    t = p.add_argument_group("training")
    t.add_argument("--stage1-steps", type=int, default=300, help="stage 1 (Wc only) optimizer steps")
    t.add_argument("--stage2-steps", type=int, default=600, help="stage 2 (all weights) optimizer steps")
    t.add_argument("--stage1-seconds", type=float, default=0,
                   help="if > 0, stage 1 also ends (and its schedule runs) by wall-clock time")
    t.add_argument("--stage2-seconds", type=float, default=0, help="likewise for stage 2")
    t.add_argument("--lr1", type=float, default=5e-5,
                   help="stage 1 peak learning rate (Wc is small: rms ~2e-3 on stories15M)")
    t.add_argument("--lr2", type=float, default=3e-5, help="stage 2 peak learning rate")
    t.add_argument("--warmup", type=float, default=0.05, help="warm-up, as a fraction of each stage")
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to this fraction of the peak")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--ema", type=float, default=0.0,
                   help="stage 2 keeps an exponential moving average of the weights with this decay (0.999: about "
                        "the last 1000 steps) and ends with it (0: off)")
    t.add_argument("--batch", type=int, default=16, help="sequences per step")
    t.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (0: the model's context)")
    t.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="parameter dtype")
    t.add_argument("--amp", default="auto", choices=["auto", "bf16", "none"],
                   help="autocast dtype (auto: bf16 on CUDA, none on CPU)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--log-every", type=int, default=10)
    return p.parse_args(argv)


def parse_temperatures(text):
    try:
        temps = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"posttrain: --temperature {text!r}: expected a number or a comma list of numbers")
    if not temps or any(t < 0 or not math.isfinite(t) for t in temps):
        raise SystemExit(f"posttrain: --temperature {text!r}: temperatures are finite and >= 0")
    return temps


def up(x):
    """Half-precision logits to float32 for the softmax; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def log(msg):
    print(f"posttrain: {msg}", flush=True)


def lr_at(progress, peak, warmup, min_ratio):
    """Linear warm-up over the first `warmup` of the stage, then cosine from peak to min_ratio * peak."""
    if warmup > 0 and progress < warmup:
        return peak * max(progress, 1e-3) / warmup
    x = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * x)))


class Loss:
    """Distillation (KL(teacher || student) per position, mean over positions) or cross-entropy."""

    def __init__(self, kind, teacher, autocast):
        self.kind, self.teacher, self.autocast = kind, teacher, autocast

    def __call__(self, student, tokens, targets, mask):
        with self.autocast():
            logits = student(tokens)
        logp = F.log_softmax(up(logits), dim=-1)
        if self.kind == "kl":
            with torch.no_grad(), self.autocast():
                t_logits = self.teacher(tokens)
            t_logp = F.log_softmax(up(t_logits), dim=-1)
            per_pos = (t_logp.exp() * (t_logp - logp)).sum(-1)
        else:
            per_pos = F.nll_loss(logp.reshape(-1, logp.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                 reduction="none").view_as(mask)
        return (per_pos * mask).sum() / mask.sum().clamp_min(1.0)


class Batches:
    """Endless shuffled batches of (tokens, targets, mask) from sampled sequences or text windows."""

    def __init__(self, seqs=None, wins=None, batch=16, seed=0, device="cpu"):
        self.seqs, self.wins, self.batch, self.device = seqs, wins, batch, device
        self.n = seqs.shape[0] if seqs is not None else len(wins)
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos, self.epochs = torch.randperm(self.n, generator=self.gen), 0, 0

    def next(self):
        if self.pos + self.batch > self.n:
            self.order, self.pos, self.epochs = torch.randperm(self.n, generator=self.gen), 0, self.epochs + 1
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        if self.seqs is not None:
            tokens = self.seqs[idx.to(self.seqs.device)]
            return tokens, None, torch.ones(tokens.shape, device=tokens.device)
        return data.pad_batch([self.wins[i] for i in idx.tolist()], self.device)


@torch.no_grad()
def validate(loss_fn, model, val):
    total, count = 0.0, 0.0
    for tokens, targets, mask in val:
        n = float(mask.sum())
        total += float(loss_fn(model, tokens, targets, mask)) * n
        count += n
    return total / max(count, 1.0)


@torch.no_grad()
def perplexity(model, docs, device, autocast):
    nll, count = 0.0, 0
    for ids in docs:
        tokens = torch.tensor([ids], device=device)
        with autocast():
            logits = model(tokens[:, :-1])
        logp = F.log_softmax(up(logits), dim=-1)[0]
        nll -= float(logp.gather(-1, tokens[0, 1:, None]).sum())
        count += len(ids) - 1
    return math.exp(nll / count)


def train_stage(name, model, params, loss_fn, batches, steps, seconds, peak_lr, args, device, ema=0.0):
    """Trains params; with ema > 0 keeps a moving average of them, returned as "ema" (the caller swaps it in)."""
    if steps <= 0 and seconds <= 0:
        log(f"{name}: skipped (no steps)")
        return {"steps": 0, "seconds": 0.0}
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    n_params = sum(p.numel() for p in params)
    budget = f"{steps} steps" if steps > 0 else ""
    if seconds > 0:
        budget += (" or " if budget else "") + f"{seconds:.0f} s"
    log(f"{name}: training {n_params:,} parameters for {budget}, peak lr {peak_lr:g}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.time()
    step, progress, run_loss, run_n, tokens_seen = 0, 0.0, None, 0, 0
    first_loss = last_loss = None
    shadow = [p_.detach().clone() for p_ in params] if ema > 0 else None
    while progress < 1.0:
        lr = lr_at(progress, peak_lr, args.warmup, args.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        tokens, targets, mask = batches.next()
        loss = loss_fn(model, tokens, targets, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        if shadow is not None:
            # Early steps average over fewer steps (decay ramps up to ema), so the start is not over-weighted.
            w = 1.0 - min(ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for s_, p_ in zip(shadow, params):
                    s_.lerp_(p_.detach(), w)
        step += 1
        tokens_seen += tokens.numel()
        run_loss = loss.detach() if run_loss is None else run_loss + loss.detach()
        run_n += 1
        elapsed = time.time() - start
        progress = step / steps if steps > 0 else 0.0
        if seconds > 0:
            progress = max(progress, elapsed / seconds)
        if step % args.log_every == 0 or progress >= 1.0 or step == 1:
            mean = float(run_loss) / run_n
            first_loss = mean if first_loss is None else first_loss
            last_loss = mean
            elapsed = time.time() - start
            log(f"{name} step {step}{'/' + str(steps) if steps > 0 else ''} loss {mean:.4f} lr {lr:.2e} "
                f"{tokens_seen / max(elapsed, 1e-9):,.0f} tok/s {elapsed:.1f}s")
            run_loss, run_n = None, 0
    sync()
    result = {"steps": step, "seconds": round(time.time() - start, 2), "tokens": tokens_seen,
              "first_logged_loss": first_loss, "last_logged_loss": last_loss, "epochs_of_data": batches.epochs}
    if shadow is not None:
        result["ema"] = shadow
    return result


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv=None):
    args = parse_args(argv)
    temps = parse_temperatures(args.temperature)
    if not 0.0 <= args.ema < 1.0:
        raise SystemExit(f"posttrain: --ema {args.ema}: expected a decay in [0, 1)")
    t_start = time.time()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    pdtype = getattr(torch, args.dtype)
    amp = args.amp if args.amp != "auto" else ("bf16" if device.type == "cuda" and pdtype == torch.float32 else "none")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        if amp == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log(f"torch {torch.__version__}, device {device} ({gpu}), params {args.dtype}, autocast {amp}")

    # --- the models
    src_cfg = read_config(args.model)
    tensors = load_tensors(args.model)
    if src_cfg.grouping is not None:
        check_uniattn_tensors(src_cfg, tensors, args.model)
    given = [args.group, args.begin, args.end]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise SystemExit("posttrain: --group, --begin and --end go together")
    grouping = tuple(given) if args.group is not None else src_cfg.grouping
    if grouping is None:
        raise SystemExit(f"posttrain: {args.model} is a standard model: give --group, --begin and --end")
    cfg = src_cfg.with_grouping(grouping)
    if not cfg.reuse_layers():
        raise SystemExit(f"posttrain: grouping {grouping} leaves no reuse layer; nothing to post-train")
    same_grouping = src_cfg.grouping == grouping
    log(f"{args.model}: {cfg.num_layers} layers, grouping G/B/E={'/'.join(map(str, grouping))}, "
        f"reuse layers {cfg.reuse_layers()}")

    seq_len = args.seq_len or cfg.max_position_embeddings
    if seq_len > cfg.max_position_embeddings:
        raise SystemExit(f"posttrain: --seq-len {seq_len} exceeds the context {cfg.max_position_embeddings}")

    base = {n: t for n, t in tensors.items() if not n.endswith(".v2_proj.weight")}
    need_teacher = args.text is None or args.distill or args.wc_init == "closed-form" or \
        (args.wc_init == "auto" and not same_grouping)
    teacher = None
    if need_teacher:
        if args.teacher:
            t_cfg = read_config(args.teacher)
            if t_cfg.grouping is not None:
                raise SystemExit(f"posttrain: the teacher {args.teacher} must be a standard model")
            teacher = build_model(t_cfg, load_tensors(args.teacher))
            log(f"teacher: {args.teacher}")
        else:
            if any(f"model.layers.{l}.self_attn.{w}.weight" not in base
                   for l in range(cfg.num_layers) for w in ("q_proj", "k_proj")):
                raise SystemExit("posttrain: the input lacks reuse layers' q_proj/k_proj (--drop-unused-qk), so the "
                                 "original cannot be recovered from it: pass --teacher DIR")
            teacher = build_model(src_cfg.with_grouping(None), base)
            log("teacher: " + ("the input" if src_cfg.grouping is None else
                               "the input with its grouping removed (exact for a checkpoint straight out of "
                               "`uniattn-convert unify`; pass --teacher otherwise)"))
        teacher.to(device=device, dtype=pdtype).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)

    wc_init = args.wc_init
    if wc_init == "auto":
        wc_init = "checkpoint" if same_grouping else "closed-form"
    zeros = {l: torch.zeros(cfg.num_heads * cfg.head_dim, cfg.hidden_size) for l in cfg.reuse_layers()}
    if wc_init == "checkpoint":
        if not same_grouping:
            raise SystemExit("posttrain: --wc-init checkpoint needs the checkpoint's own grouping")
        model = build_model(cfg, tensors)
    elif wc_init in ("zeros", "closed-form"):
        model = build_model(cfg, base, wc=zeros)
    else:
        given_wc, _ = safetensors_io.read_file(wc_init)
        wc = {}
        for l in cfg.reuse_layers():
            name = f"model.layers.{l}.v2_proj.weight"
            if name not in given_wc:
                raise SystemExit(f"posttrain: {wc_init} has no {name}")
            wc[l] = given_wc[name]
        model = build_model(cfg, base, wc=wc)
    model.to(device=device, dtype=pdtype)
    log(f"Wc init: {wc_init}")

    summary = {"args": vars(args), "torch": torch.__version__, "device": gpu, "autocast": amp,
               "grouping": list(grouping), "reuse_layers": cfg.reuse_layers(), "wc_init": wc_init}

    if wc_init == "closed-form":
        calib = data.sample_sequences(teacher, args.calib_samples, cfg.max_position_embeddings, args.sample_batch,
                                      1.0, args.seed + 1, device, nullcontext)
        summary["closed_form_unexplained"] = calibrate.closed_form_wc(teacher, model, calib, args.ridge,
                                                                      log=log)

    # --- the data
    tok_docs = None
    if args.text or args.eval_text:
        tokenizer = data.Tokenizer(os.path.join(args.model, "tokenizer.model"), cfg.bos_token_id)
    if args.text:
        wins = data.windows(data.load_corpus(args.text, tokenizer, 1 << 30), seq_len)
        gen = torch.Generator().manual_seed(args.seed)
        perm = torch.randperm(len(wins), generator=gen).tolist()
        wins = [wins[i] for i in perm]
        n_val = min(args.val_samples, len(wins) // 10)
        val_wins, train_wins = wins[:n_val], wins[n_val:]
        log(f"{args.text}: {len(train_wins)} training windows of up to {seq_len} tokens, {n_val} held apart")
        batches = Batches(wins=train_wins, batch=args.batch, seed=args.seed, device=device)
        val = [data.pad_batch(val_wins[i:i + args.batch], device) for i in range(0, len(val_wins), args.batch)]
        loss_kind = "kl" if args.distill else "ce"
    else:
        n = args.samples or min(16384, args.batch * max(args.stage1_steps, args.stage2_steps, 1))
        t0 = time.time()
        train_parts, val_parts = [], []
        for i, temp in enumerate(temps):  # the samples split evenly, the first temperatures take the remainder
            n_i = n // len(temps) + (i < n % len(temps))
            v_i = args.val_samples // len(temps) + (i < args.val_samples % len(temps))
            seqs = data.sample_sequences(teacher, n_i + v_i, seq_len, args.sample_batch, temp, args.seed + 2 + i,
                                         device, autocast)
            train_parts.append(seqs[:n_i])
            val_parts.append(seqs[n_i:])
        log(f"sampled {n} + {args.val_samples} sequences of {seq_len} tokens from the teacher at temperature "
            f"{', '.join(f'{t:g}' for t in temps)} in {time.time() - t0:.1f}s")
        summary["sampling_seconds"] = round(time.time() - t0, 2)
        batches = Batches(seqs=torch.cat(train_parts), batch=args.batch, seed=args.seed, device=device)
        vs = torch.cat(val_parts)
        val = [(vs[i:i + args.batch], None, torch.ones(vs[i:i + args.batch].shape, device=device))
               for i in range(0, vs.shape[0], args.batch)]
        loss_kind = "kl"
    if val and val[0][0].shape[0] == 0:
        val = []
    if args.eval_text:
        tok_docs = data.load_corpus(args.eval_text, tokenizer, cfg.max_position_embeddings)
    loss_fn = Loss(loss_kind, teacher, autocast)
    summary["loss"] = loss_kind

    def report(tag):
        entry = {}
        if val:
            entry["val_loss"] = validate(loss_fn, model, val)
        if tok_docs:
            entry["eval_perplexity"] = perplexity(model, tok_docs, device, autocast)
        log(f"{tag}: " + (", ".join(f"{k} {v:.4f}" for k, v in entry.items()) or
                          "no validation set (the corpus is too small to hold any apart; see --eval-text)"))
        summary[tag] = entry

    if tok_docs and teacher is not None:
        summary["teacher_eval_perplexity"] = perplexity(teacher, tok_docs, device, autocast)
        log(f"teacher: eval_perplexity {summary['teacher_eval_perplexity']:.4f}")
    report("before")

    # --- stage 1: Wc only
    for p_ in model.parameters():
        p_.requires_grad_(False)
    wc_params = [model.model.layers[l].v2_proj.weight for l in cfg.reuse_layers()]
    for p_ in wc_params:
        p_.requires_grad_(True)
    summary["stage1"] = train_stage("stage 1", model, wc_params, loss_fn, batches, args.stage1_steps,
                                    args.stage1_seconds, args.lr1, args, device)
    report("after_stage1")
    meta = {"format": "pt", "producer": "tools/posttrain/posttrain.py"}
    if args.save_stage1:
        save_checkpoint(model, args.save_stage1, args.model, args.save_dtype, meta)
        log(f"wrote {args.save_stage1}")

    # --- stage 2: every weight the unified model reads
    for layer in model.model.layers:
        unused = [layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight] if layer.kind == "reuse" else []
        for p_ in layer.parameters():
            p_.requires_grad_(all(p_ is not u for u in unused))
    for p_ in list(model.model.embed_tokens.parameters()) + list(model.model.norm.parameters()) + \
            (list(model.lm_head.parameters()) if model.lm_head is not None else []):
        p_.requires_grad_(True)
    all_params = [p_ for p_ in model.parameters() if p_.requires_grad]
    summary["stage2"] = train_stage("stage 2", model, all_params, loss_fn, batches, args.stage2_steps,
                                    args.stage2_seconds, args.lr2, args, device, ema=args.ema)
    shadow = summary["stage2"].pop("ema", None)
    if shadow is not None:
        report("after_stage2_without_ema")
        with torch.no_grad():
            for p_, s_ in zip(all_params, shadow):
                p_.copy_(s_)
        log(f"stage 2: the weights are now the moving average (decay {args.ema:g})")
    report("after_stage2")

    save_checkpoint(model, args.out, args.model, args.save_dtype, meta)
    summary["total_seconds"] = round(time.time() - t_start, 2)
    with open(args.summary or os.path.join(args.out, "posttrain.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    log(f"wrote {args.out} ({summary['total_seconds']:.1f}s in all)")
    return summary


if __name__ == "__main__":
    main()
