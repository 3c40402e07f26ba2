"""Training data for post-training: sequences the original model samples itself (for distillation), or a text
corpus split into documents at blank lines, each BOS + tokens (the protocol of uniattn-eval and calibration,
engine/model/text_corpus.h)."""
import torch

from uniattn_model import KVCache


def split_documents(text):
    """Documents are runs of non-blank lines (a line of spaces and tabs is blank), joined with '\\n'."""
    docs, cur = [], []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip(" \t") == "":
            if cur:
                docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        docs.append("\n".join(cur))
    return docs


class Tokenizer:
    """SentencePiece tokenizer.model of a model directory (python3-sentencepiece)."""

    def __init__(self, path, bos_id):
        try:
            import sentencepiece
        except ImportError as e:
            raise SystemExit("posttrain: --text needs the sentencepiece module (Debian: python3-sentencepiece; "
                             "scripts/setup.sh installs it)") from e
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.Load(path)
        self.bos_id = bos_id

    def encode_doc(self, doc):
        return [self.bos_id] + list(self.sp.EncodeAsIds(doc))


def load_corpus(path, tokenizer, max_len):
    """The uniattn-eval protocol: each document BOS + tokens truncated to max_len; fewer than 2 tokens dropped."""
    with open(path, encoding="utf-8") as f:
        docs = split_documents(f.read())
    out = []
    for doc in docs:
        ids = tokenizer.encode_doc(doc)[:max_len]
        if len(ids) >= 2:
            out.append(ids)
    if not out:
        raise SystemExit(f"posttrain: {path}: no documents with at least one token to predict")
    return out


def windows(docs, seq_len):
    """Splits each BOS + tokens document into windows of at most seq_len + 1 tokens (input + next token),
    consecutive windows overlapping by one token so that every token is predicted once."""
    out = []
    for ids in docs:
        for s in range(0, max(1, len(ids) - 1), seq_len):
            w = ids[s:s + seq_len + 1]
            if len(w) >= 2:
                out.append(w)
    return out


def pad_batch(wins, device):
    """-> tokens [B, T], targets [B, T] (-100 where none), mask [B, T] (1.0 where a next token exists)."""
    t = max(len(w) for w in wins) - 1
    tokens = torch.zeros(len(wins), t, dtype=torch.long)
    targets = torch.full((len(wins), t), -100, dtype=torch.long)
    for i, w in enumerate(wins):
        n = len(w) - 1
        tokens[i, :n] = torch.tensor(w[:-1])
        targets[i, :n] = torch.tensor(w[1:])
    mask = (targets != -100).float()
    return tokens.to(device), targets.to(device), mask.to(device)


@torch.no_grad()
def sample_sequences(model, num, seq_len, batch, temperature, seed, device, autocast, log=None):
    """num sequences of seq_len tokens (BOS first) sampled from model with a KV cache -> LongTensor [num, seq_len]."""
    bos = model.config.bos_token_id
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = []
    for start in range(0, num, batch):
        b = min(batch, num - start)
        cache = KVCache(model.config.num_layers, seq_len)
        cur = torch.full((b, 1), bos, dtype=torch.long, device=device)
        seq = [cur]
        for t in range(seq_len - 1):
            with autocast():
                logits = model(cur, cache=cache)[:, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                cur = torch.multinomial(probs, 1, generator=gen)
            else:
                cur = logits.argmax(-1, keepdim=True)
            seq.append(cur)
        out.append(torch.cat(seq, dim=1))
        if log:
            log(f"sampled {start + b}/{num} sequences")
    return torch.cat(out, dim=0)
