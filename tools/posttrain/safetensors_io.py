"""A small safetensors reader and writer (F32, F16, BF16), for machines without the `safetensors` package.

Format: an 8-byte little-endian header length N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
little-endian data; offsets are relative to the end of the header. Sharded checkpoints list their files
in model.safetensors.index.json ({"weight_map": {name: file}}).
"""
import json
import os
import struct

import numpy as np
import torch

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
_ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
_TORCH_TO_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_ST_NAMES = {"f32": "F32", "float32": "F32", "f16": "F16", "float16": "F16", "bf16": "BF16", "bfloat16": "BF16"}


def st_dtype(name):
    """'f32' / 'float16' / 'BF16' ... -> the safetensors dtype string."""
    if name.upper() in _ELEMENT_BYTES:
        return name.upper()
    if name.lower() not in _ST_NAMES:
        raise ValueError(f"unsupported dtype {name!r} (f32, f16, bf16)")
    return _ST_NAMES[name.lower()]


def _decode(raw, dtype, shape):
    if dtype == "BF16":
        # bfloat16 is the top half of a float32: widen exactly through uint32.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return torch.from_numpy(bits.view(np.float32).reshape(shape).copy()).to(torch.bfloat16)
    arr = np.frombuffer(raw, dtype=np.dtype(_NP_DTYPES[dtype]).newbyteorder("<")).reshape(shape)
    return torch.from_numpy(arr.astype(_NP_DTYPES[dtype], copy=True))


def read_file(path):
    """Returns ({name: tensor}, metadata) with tensors in the file's own dtype, on the CPU."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        dtype = info["dtype"]
        if dtype not in _ELEMENT_BYTES:
            raise ValueError(f"{path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16, F64")
        shape = [int(s) for s in info["shape"]]
        begin, end = info["data_offsets"]
        count = 1
        for s in shape:
            count *= s
        if end - begin != count * _ELEMENT_BYTES[dtype] or end > len(data):
            raise ValueError(f"{path}: tensor {name} has inconsistent data_offsets {begin}..{end}")
        tensors[name] = _decode(bytes(data[begin:end]), dtype, shape)
    return tensors, metadata


def read_dir(model_dir):
    """All tensors of a model directory: model.safetensors, or the shards of model.safetensors.index.json."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: missing (a model directory needs model.safetensors)")
        part, _ = read_file(path)
        tensors.update(part)
    return tensors


def _encode(t, dtype):
    t = t.detach().to("cpu")
    if dtype == "BF16":
        # Round to nearest even, as torch does, then keep the top 16 bits.
        bits = t.to(torch.bfloat16).to(torch.float32).numpy().view(np.uint32) >> 16
        return bits.astype("<u2").tobytes()
    return t.to(torch.float64).numpy().astype(np.dtype(_NP_DTYPES[dtype]).newbyteorder("<")).tobytes()


def write_file(path, tensors, dtype="F32", metadata=None):
    """Writes {name: tensor} in one dtype ('F32', 'F16', 'BF16'), names sorted, 8-byte aligned header."""
    dtype = st_dtype(dtype)
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        raw = _encode(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
    os.replace(tmp, path)


def torch_dtype_name(dtype):
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[st_dtype(dtype)]
