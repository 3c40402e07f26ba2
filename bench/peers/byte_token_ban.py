#!/usr/bin/env python3
"""Token ids whose text alone is not valid UTF-8, as ranges for `uniattn-bench serve --ban-tokens`.

    python3 bench/peers/byte_token_ban.py TOKENIZER_DIR

A random-weight model samples such tokens (SentencePiece byte-fallback pieces <0xXX>, byte-level BPE pieces
holding part of a character) in orders that leave the output invalid UTF-8; llama.cpp's server answers those
requests with an error event. Banned for both servers alike (logit_bias -100), every output is valid text.
Reads tokenizer.json (byte-level BPE) or else tokenizer.model (through bench/peers/spm_reader when the
sentencepiece module is missing).
"""
import json
import os
import sys


def byte_level_decoder():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def banned_ids(tok_dir):
    path = os.path.join(tok_dir, "tokenizer.json")
    if os.path.exists(path):
        vocab = json.load(open(path, encoding="utf-8"))["model"]["vocab"]
        dec = byte_level_decoder()
        bad = []
        for piece, i in vocab.items():
            try:
                bytes(dec[ch] for ch in piece).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                bad.append(i)
        return sorted(bad)
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "spm_reader"))
    import sentencepiece  # the real module, or the reader beside this script
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
    return [i for i in range(sp.vocab_size()) if sp.IsByte(i)]


def ranges(ids):
    out, start, prev = [], None, None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append((start, prev))
            start = prev = i
    if start is not None:
        out.append((start, prev))
    return ",".join("%d-%d" % (a, b) if a != b else "%d" % a for a, b in out)


if __name__ == "__main__":
    print(ranges(banned_ids(sys.argv[1])))
