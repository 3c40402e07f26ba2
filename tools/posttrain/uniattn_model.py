"""The UniAttn Llama model of docs/uniattn.md in plain PyTorch (no transformers), and checkpoint I/O
in the project's format (a Hugging Face Llama directory, plus grouping_* keys and v2_proj tensors).

Semantics, as tests/engine/reference_model.h computes them:
- layer kinds from (G, B, E): normal outside [B, E); anchor where (l - B) % G == 0; reuse otherwise;
- RMSNorm, Hugging Face half-split RoPE, SwiGLU MLP, GQA with query head h reading KV head h // n_rep;
- an anchor's softmax probabilities P (one per query head) are handed to the reuse layers above it, which
  apply them to their own V, add no RoPE or mask, and add c = x̃·Wc^T to the residual next to Wo·a.
"""
import json
import math
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F

import safetensors_io

GROUPING_KEYS = ("grouping_idx", "grouping_begin_idx", "grouping_end_idx")


def layer_kinds(num_layers, grouping):
    """grouping = (G, B, E) or None -> ['normal' | 'anchor' | 'reuse'] per layer (the engine's rule)."""
    kinds = ["normal"] * num_layers
    if grouping is None:
        return kinds
    g, b, e = grouping
    if g < 1 or b < 0 or b > e or e > num_layers + 1:
        raise ValueError(f"invalid grouping G={g} B={b} E={e} for {num_layers} layers "
                         "(need G >= 1, 0 <= B <= E <= num_hidden_layers + 1)")
    for l in range(num_layers):
        if b <= l < e:
            kinds[l] = "anchor" if (l - b) % g == 0 else "reuse"
    return kinds


class Config:
    """The fields of config.json the model needs; `raw` keeps the whole dict so that writing preserves it."""

    def __init__(self, raw):
        self.raw = dict(raw)
        arch = (raw.get("architectures") or ["LlamaForCausalLM"])[0]
        if arch not in FAMILIES:
            raise ValueError(f"architecture {arch!r} is not supported ({', '.join(FAMILIES)})")
        family = FAMILIES[arch]
        # The engine refuses what it does not implement (docs/models.md); this model mirrors what it implements.
        attention_bias = bool(raw.get("attention_bias", False))
        self.qkv_bias = family["qkv_bias"] or (attention_bias and family["attention_bias_ok"])
        self.o_bias = attention_bias and family["attention_bias_ok"]
        self.qk_norm = family["qk_norm"]
        window = raw.get("sliding_window", 4096 if arch == "MistralForCausalLM" else None)
        use_window = arch == "MistralForCausalLM" or bool(raw.get("use_sliding_window", False))
        self.sliding_window = int(window) if (use_window and window) else 0
        if raw.get("mlp_bias"):
            raise ValueError("mlp_bias is not supported")
        rs = raw.get("rope_scaling") or (raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else None) or {}
        self.rope_type = rs.get("rope_type", rs.get("type", "default"))
        if self.rope_type not in ("default", "linear", "dynamic", "llama3"):
            raise ValueError(f"rope_type {self.rope_type!r} is not supported")
        self.rope_scaling = rs
        self.vocab_size = int(raw["vocab_size"])
        self.hidden_size = int(raw["hidden_size"])
        self.intermediate_size = int(raw["intermediate_size"])
        self.num_layers = int(raw["num_hidden_layers"])
        self.num_heads = int(raw["num_attention_heads"])
        self.num_kv_heads = int(raw.get("num_key_value_heads") or self.num_heads)
        self.head_dim = int(raw.get("head_dim") or (128 if arch == "Qwen3ForCausalLM" else self.hidden_size // self.num_heads))
        self.max_position_embeddings = int(raw.get("max_position_embeddings", 2048))
        self.rope_theta = float(raw.get("rope_theta", rs.get("rope_theta", 10000.0)))
        self.rms_norm_eps = float(raw.get("rms_norm_eps", 1e-6))
        self.tie_word_embeddings = bool(raw.get("tie_word_embeddings", False))
        self.bos_token_id = int(raw.get("bos_token_id", 1))
        eos = raw.get("eos_token_id", 2)
        self.eos_token_id = int(eos[0] if isinstance(eos, list) else eos)
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        present = [k in raw for k in GROUPING_KEYS]
        if any(present) and not all(present):
            raise ValueError("UniAttn needs all three of " + ", ".join(GROUPING_KEYS))
        self.grouping = tuple(int(raw[k]) for k in GROUPING_KEYS) if all(present) else None
        self.kinds = layer_kinds(self.num_layers, self.grouping)

    def with_grouping(self, grouping):
        raw = {k: v for k, v in self.raw.items() if k not in GROUPING_KEYS}
        if grouping is not None:
            raw.update(zip(GROUPING_KEYS, grouping))
        return Config(raw)

    def reuse_layers(self):
        return [l for l, k in enumerate(self.kinds) if k == "reuse"]


    def rope_inv_freq(self):
        """The [head_dim/2] rotary frequencies with rope_scaling applied, in float64 (the engine's
        ModelConfig::RopeInvFreq: linear divides by factor, llama3 smooths by wavelength, dynamic is vLLM's fixed base)."""
        hd, rs = self.head_dim, self.rope_scaling
        base = self.rope_theta
        if self.rope_type == "dynamic" and hd > 2:
            f = float(rs["factor"])
            base *= (f * f - (f - 1)) ** (hd / (hd - 2))
        inv = base ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2.0 / hd)
        if self.rope_type == "linear":
            inv = inv / float(rs["factor"])
        elif self.rope_type == "llama3":
            f, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
            old = float(rs["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv
            smooth = (old / wavelen - lo) / (hi - lo)
            mid = (1 - smooth) * inv / f + smooth * inv
            inv = torch.where(wavelen < old / hi, inv, torch.where(wavelen > old / lo, inv / f, mid))
        return inv


# Per architecture: which tensors and options exist (the engine's kFamilies, engine/model/model_config.cc).
FAMILIES = {
    "LlamaForCausalLM": {"qkv_bias": False, "attention_bias_ok": True, "qk_norm": False},
    "MistralForCausalLM": {"qkv_bias": False, "attention_bias_ok": False, "qk_norm": False},
    "Qwen2ForCausalLM": {"qkv_bias": True, "attention_bias_ok": False, "qk_norm": False},
    "Qwen3ForCausalLM": {"qkv_bias": False, "attention_bias_ok": True, "qk_norm": True},
}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c.hidden_size, c.head_dim
        self.q_proj = nn.Linear(d, c.num_heads * hd, bias=c.qkv_bias)
        self.k_proj = nn.Linear(d, c.num_kv_heads * hd, bias=c.qkv_bias)
        self.v_proj = nn.Linear(d, c.num_kv_heads * hd, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * hd, d, bias=c.o_bias)
        # Qwen3: RMSNorm over head_dim of every head of q and k, before RoPE.
        self.q_norm = RMSNorm(hd, c.rms_norm_eps) if c.qk_norm else None
        self.k_norm = RMSNorm(hd, c.rms_norm_eps) if c.qk_norm else None


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c, kind):
        super().__init__()
        self.kind = kind
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        # Wc: model.layers.{l}.v2_proj.weight [Hq*hd, d], reuse layers only.
        self.v2_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False) if kind == "reuse" else None


class Backbone(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c, k) for k in c.kinds)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class KVCache:
    """Per-layer K (post-RoPE; anchor and normal layers) and V, [B, Hkv, max_len, hd], for sampling: buffers are
    allocated on first use and filled in place; forward() reads the first `length` positions."""

    def __init__(self, num_layers, max_len):
        self.k = [None] * num_layers
        self.v = [None] * num_layers
        self.max_len = max_len
        self.length = 0

    def append(self, store, l, x):  # x [B, H, T, hd] -> the cached [B, H, length + T, hd]
        buf = store[l]
        if buf is None:
            buf = store[l] = x.new_empty(x.shape[0], x.shape[1], self.max_len, x.shape[3])
        end = self.length + x.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions is full")
        buf[:, :, self.length:end] = x
        return buf[:, :, :end]


class UniAttnLM(nn.Module):
    """state_dict() names are exactly the checkpoint's tensor names."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.model = Backbone(c)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self._rope = {}

    def _rope_tables(self, start, length, device, dtype):
        c = self.config
        key = (device, dtype)
        need = start + length
        tab = self._rope.get(key)
        if tab is None or tab[0].shape[0] < need:
            n = max(need, c.max_position_embeddings)
            # float64 angles, as the reference; cast once.
            inv = c.rope_inv_freq()
            ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
            tab = (torch.cos(ang).to(device=device, dtype=dtype), torch.sin(ang).to(device=device, dtype=dtype))
            self._rope[key] = tab
        return tab[0][start:need], tab[1][start:need]

    @staticmethod
    def _apply_rope(x, cos, sin):  # x [B, H, T, hd]; cos/sin [T, hd/2]; half-split (Hugging Face) convention
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def forward(self, tokens, cache=None, trace=None, stop_after=None, zero_wc=False, wrong_gqa=False):
        """tokens [B, T] -> logits [B, T, vocab].

        cache: a KVCache continued in place (positions start at cache.length).
        trace: a dict filled with per-layer 'x_norm' (x̃), 'attn_out' (x + Wo·a, before the compensation) and
        'post_attn' (the residual after attention and compensation); stop_after = l returns None after layer l.
        zero_wc / wrong_gqa: deliberate departures, used as controls by tests.
        """
        c = self.config
        bsz, seq = tokens.shape
        start = cache.length if cache is not None else 0
        hq, hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        n_rep = hq // hkv
        x = self.model.embed_tokens(tokens)
        cos, sin = self._rope_tables(start, seq, x.device, x.dtype)
        total = start + seq
        qi = torch.arange(start, total, device=x.device)[:, None]
        kj = torch.arange(total, device=x.device)[None, :]
        hidden = kj > qi
        if c.sliding_window > 0:  # position p attends to p - W < j <= p
            hidden = hidden | (kj <= qi - c.sliding_window)
        mask = torch.zeros(seq, total, device=x.device, dtype=x.dtype).masked_fill(hidden, float("-inf"))
        if wrong_gqa:
            heads = torch.arange(hq, device=x.device) % hkv
        probs = None
        for l, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            xn = layer.input_layernorm(x)
            v = attn.v_proj(xn).view(bsz, seq, hkv, hd).transpose(1, 2)
            if cache is not None:
                v = cache.append(cache.v, l, v)
            if layer.kind != "reuse":
                q = attn.q_proj(xn).view(bsz, seq, hq, hd).transpose(1, 2)
                k = attn.k_proj(xn).view(bsz, seq, hkv, hd).transpose(1, 2)
                if attn.q_norm is not None:
                    q, k = attn.q_norm(q), attn.k_norm(k)
                q = self._apply_rope(q, cos, sin)
                k = self._apply_rope(k, cos, sin)
                if cache is not None:
                    k = cache.append(cache.k, l, k)
                k = k[:, heads] if wrong_gqa else k.repeat_interleave(n_rep, dim=1)
                scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)) + mask
                # [B, Hq, T, S], one per query head; at least float32 under autocast
                probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
            elif probs is None:
                raise ValueError(f"reuse layer {l} has no anchor below it")
            v = v[:, heads] if wrong_gqa else v.repeat_interleave(n_rep, dim=1)
            a = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(bsz, seq, hq * hd)
            h = x + attn.o_proj(a)
            if trace is not None:
                trace.setdefault("x_norm", {})[l] = xn
                trace.setdefault("attn_out", {})[l] = h
            if layer.kind == "reuse" and not zero_wc:
                h = h + layer.v2_proj(xn)
            if trace is not None:
                trace.setdefault("post_attn", {})[l] = h
            if stop_after is not None and l == stop_after:
                return None
            x = h + layer.mlp(layer.post_attention_layernorm(h))
        if cache is not None:
            cache.length = total
        x = self.model.norm(x)
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, w)


# ---------------------------------------------------------------------------------------------- checkpoints

def read_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        return Config(json.load(f))


def load_tensors(model_dir):
    return safetensors_io.read_dir(model_dir)


def check_uniattn_tensors(c, tensors, where):
    """docs/uniattn.md §5: v2_proj tensors exactly for the reuse layers, and only with grouping keys."""
    have = sorted(int(n.split(".")[2]) for n in tensors if n.endswith(".v2_proj.weight"))
    want = c.reuse_layers()
    if have != want:
        raise ValueError(f"{where}: v2_proj tensors for layers {have} but the grouping "
                         f"{c.grouping} makes layers {want} reuse layers")


def build_model(c, tensors, wc=None):
    """A UniAttnLM for config c from checkpoint tensors (any dtype; cast to float32).

    wc: {layer: tensor [Hq*hd, d]} for reuse layers, overriding/filling v2_proj (None: take the checkpoint's).
    Reuse layers' q_proj/k_proj may be absent (uniattn-convert unify --drop-unused-qk); they are then kept at
    zero and not written back. Any other missing or unexpected tensor is an error.
    """
    m = UniAttnLM(c)
    sd = m.state_dict()
    missing = []
    loaded = {}
    for name, ref in sd.items():
        if name.endswith(".v2_proj.weight"):
            layer = int(name.split(".")[2])
            t = (wc or {}).get(layer, tensors.get(name))
            if t is None:
                raise ValueError(f"no compensation for reuse layer {layer} ({name})")
        else:
            t = tensors.get(name)
        if t is None:
            parts = name.split(".")
            if (parts[1] == "layers" and parts[-2] in ("q_proj", "k_proj", "q_norm", "k_norm")
                    and c.kinds[int(parts[2])] == "reuse"):
                t = torch.zeros_like(ref)  # dropped by unify --drop-unused-qk; never read by a reuse layer
                m.model.layers[int(parts[2])].dropped_qk = True
            else:
                missing.append(name)
                continue
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"tensor {name}: shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        loaded[name] = t.to(torch.float32)
    if missing:
        raise ValueError("checkpoint lacks tensors: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    known = set(sd) | {f"model.layers.{l}.v2_proj.weight" for l in range(c.num_layers)}
    extra = [n for n in tensors if n not in known and not (c.tie_word_embeddings and n == "lm_head.weight")]
    if extra:
        raise ValueError("checkpoint has unexpected tensors: " + ", ".join(sorted(extra)[:8]))
    m.load_state_dict(loaded)
    return m


def export_tensors(m):
    """{name: float32 CPU tensor} to write: every weight, v2_proj for reuse layers, no dropped q/k."""
    out = {}
    for name, t in m.state_dict().items():
        parts = name.split(".")
        if len(parts) > 3 and parts[1] == "layers" and parts[-2] in ("q_proj", "k_proj", "q_norm", "k_norm") \
                and getattr(m.model.layers[int(parts[2])], "dropped_qk", False):
            continue
        out[name] = t.detach().to("cpu", torch.float32)
    return out


def save_checkpoint(m, out_dir, src_dir=None, dtype="F32", metadata=None):
    """Writes config.json (the source's keys, this model's grouping), model.safetensors and the tokenizer
    files of src_dir, so that uniattn-serve / uniattn-eval load the directory."""
    os.makedirs(out_dir, exist_ok=True)
    c = m.config
    raw = {k: v for k, v in c.raw.items() if k not in GROUPING_KEYS}
    if c.grouping is not None:
        raw.update(zip(GROUPING_KEYS, c.grouping))
    raw["torch_dtype"] = safetensors_io.torch_dtype_name(dtype)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
        f.write("\n")
    safetensors_io.write_file(os.path.join(out_dir, "model.safetensors"), export_tensors(m), dtype, metadata)
    if src_dir:
        for name in sorted(os.listdir(src_dir)):
            if name.startswith("tokenizer") or name in ("special_tokens_map.json", "generation_config.json"):
                shutil.copyfile(os.path.join(src_dir, name), os.path.join(out_dir, name))
