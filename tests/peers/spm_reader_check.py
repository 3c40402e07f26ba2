"""bench/peers/spm_reader against the real sentencepiece module (Debian's python3-sentencepiece) on a
tokenizer.model: every piece's text, score and type must agree.

    /usr/bin/python3 tests/peers/spm_reader_check.py models/stories15M/tokenizer.model
"""
import importlib.util
import os
import sys

import sentencepiece as real

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "spm_reader", os.path.join(here, "..", "..", "bench", "peers", "spm_reader", "sentencepiece.py"))
ours = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ours)

path = sys.argv[1]
a, b = real.SentencePieceProcessor(), ours.SentencePieceProcessor()
a.LoadFromFile(path)
b.LoadFromFile(path)
assert a.vocab_size() == b.vocab_size(), (a.vocab_size(), b.vocab_size())
kinds = {}
for i in range(a.vocab_size()):
    got = (b.IdToPiece(i), b.GetScore(i), b.IsUnknown(i), b.IsControl(i), b.IsUnused(i), b.IsByte(i))
    want = (a.IdToPiece(i), a.GetScore(i), a.IsUnknown(i), a.IsControl(i), a.IsUnused(i), a.IsByte(i))
    assert got == want, (i, got, want)
    kinds[want[2:]] = kinds.get(want[2:], 0) + 1
print("spm_reader_check: %d pieces agree (%d kinds of type flags)" % (a.vocab_size(), len(kinds)))
