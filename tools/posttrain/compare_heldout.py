#!/usr/bin/env python3
"""Perplexity of a model against a reference on held-out text, with a paired bootstrap interval.

    /usr/bin/python3 tools/posttrain/compare_heldout.py --model DIR --reference DIR --text FILE

Both models are read in the project's format (standard or UniAttn) and run in float64 on the CPU with
tools/posttrain's PyTorch model; documents split at blank lines, each BOS + tokens, every token after the
first predicted (uniattn-eval's protocol). Prints each model's perplexity, the ratio, and a 95% interval of
the ratio from resampling documents (paired: the same resample for both models), so that a difference of
half a point on a small held-out set can be told from noise.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
from uniattn_model import build_model, load_tensors, read_config  # noqa: E402


@torch.no_grad()
def doc_nll(model_dir, docs):
    cfg = read_config(model_dir)
    model = build_model(cfg, load_tensors(model_dir)).to(torch.float64).eval()
    out = []
    for ids in docs:
        tokens = torch.tensor([ids])
        logp = F.log_softmax(model(tokens[:, :-1]).double(), dim=-1)[0]
        out.append(-logp.gather(-1, tokens[0, 1:, None]).squeeze(-1))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    cfg = read_config(args.reference)
    tok = data.Tokenizer(os.path.join(args.reference, "tokenizer.model"), cfg.bos_token_id)
    docs = data.load_corpus(args.text, tok, cfg.max_position_embeddings)
    a, r = doc_nll(args.model, docs), doc_nll(args.reference, docs)
    a_sum = torch.stack([x.sum() for x in a])
    r_sum = torch.stack([x.sum() for x in r])
    counts = torch.tensor([float(len(x)) for x in a], dtype=torch.float64)
    n = counts.sum()
    ppl_a, ppl_r = math.exp(a_sum.sum() / n), math.exp(r_sum.sum() / n)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, len(docs), (args.resamples, len(docs)), generator=g)
    ratio = torch.exp((a_sum[idx].sum(1) - r_sum[idx].sum(1)) / counts[idx].sum(1))
    lo, hi = torch.quantile(ratio, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    print(f"documents {len(docs)}, predicted tokens {int(n)}")
    print(f"perplexity: model {ppl_a:.4f}, reference {ppl_r:.4f}, ratio {ppl_a / ppl_r:.4f} "
          f"({100 * (ppl_a / ppl_r - 1):+.2f}%)")
    print(f"95% interval of the ratio over {args.resamples} paired document resamples: [{lo:.4f}, {hi:.4f}] "
          f"({100 * (lo - 1):+.2f}% .. {100 * (hi - 1):+.2f}%)")


if __name__ == "__main__":
    main()
