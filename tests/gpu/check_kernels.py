#!/usr/bin/env python3
"""Checks and times memrec_tf's CUDA kernels on a GPU machine without TensorFlow.

The kernels of custom_ops/memrec_kernels_gpu.cuh (with custom_ops/memrec_math.h)
are compiled here by NVRTC through CuPy, from the very files that the op
library compiles with nvcc, and driven the way memrec_kernels_gpu.cu.cc
drives them (CuPy's sort and cumsum stand in for CUB's radix sort and scans).
Their results are compared with a numpy reference of the formula written in
this file, including a uint64 numpy implementation of the hash.

Run from the repository root:

    python tests/gpu/check_kernels.py              # needs a GPU, CuPy, PyTorch
    python tests/gpu/check_kernels.py --self-test  # numpy only, no GPU

The GPU run draws fresh random inputs (the seed is printed; --seed repeats a
run), checks hash rows, forward (combiners none/sum/mean/sqrtn, weight modes
scalar/per_hash, with and without per-id weights, random and vocabulary
signatures, empty bags) and both gradients (Zipf ids, rows hit thousands of
times) in float32, float64 and, when cuda_fp16.h is found, float16 and
bfloat16; outputs are filled with NaN before every launch. The forward from
token tables stored for serving (int8 with a float32 scale per row, and
bfloat16 when cuda_fp16.h is found) must equal, bit for bit, the float32
forward on the rows they read back (float(q) * scale, float(q)), across the
same matrix of combiners, modes and signatures. It then times the
forward and forward+backward at 4096 bags x 26 ids, d = 64, against a device
copy and torch's embedding over a 40M x 64 table, and prints one table.
Exit status: 0 when every check passed, 1 otherwise.

The pinned hash vectors are read from tests/ops/test_hash_vectors.py (the
project's contract, produced by the CPU op), without importing it.

--self-test checks the numpy reference alone: the gradients against exact
directional derivatives of the forward reference, then the pinned vectors.
tests/ops/test_gpu_build.py compares this reference with the TensorFlow CPU op,
compiles the kernels with NVRTC when it finds one, and runs this very script's
GPU part on the CPU under a small CUDA emulator.
"""
import argparse
import dataclasses
import hashlib
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CUSTOM_OPS = os.path.join(REPO, "custom_ops")
KERNEL_HEADER = "memrec_kernels_gpu.cuh"

# ----------------------------------------------------------- numpy reference
def _load_signature_module():
    """memrec_tf/ops/signature.py by path: pure Python, no TensorFlow needed."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "memrec_tf", "ops", "signature.py")
    spec = importlib.util.spec_from_file_location("memrec_signature", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The constants of memrec_math.h, from the package's pure-Python copy (pinned
# against the C++ op by tests/ops/test_hash_vectors.py).
_SIGNATURE = _load_signature_module()
TOKEN_STREAM = _SIGNATURE.TOKEN_STREAM
WEIGHT_STREAM = _SIGNATURE.WEIGHT_STREAM
SALT_STREAM = _SIGNATURE.SALT_STREAM
MIX_MUL1 = _SIGNATURE.MIX_MUL1
MIX_MUL2 = _SIGNATURE.MIX_MUL2
MAX_HASHES = _SIGNATURE.MAX_HASHES
# SplitRadix of memrec_math.h: (offsets, radices, strides).
split_radix = _SIGNATURE.split_radix
MASK64 = (1 << 64) - 1
COMBINERS = {"none": 0, "sum": 1, "mean": 2, "sqrtn": 3}
U64 = np.uint64


def mix64(z):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z ^ (z >> U64(30))
        z = z * U64(MIX_MUL1)
        z = z ^ (z >> U64(27))
        z = z * U64(MIX_MUL2)
        z = z ^ (z >> U64(31))
    return z


def mix64_int(z):
    """The same on one Python int."""
    return int(mix64(np.array([z & MASK64], dtype=np.uint64))[0])


def salt_key(seed, salt):
    """SaltKey(seed, salt) of memrec_math.h, as an unsigned Python int."""
    return mix64_int((seed & MASK64) + mix64_int((salt + SALT_STREAM) & MASK64))


# memrec::Signature, field by field (naturally aligned, no padding: 824 bytes).
_SIGNATURE_FIELDS = [("num_hashes", "<i4"), ("num_weight_hashes", "<i4")] + [
    (name, "<i8") for name in ("num_token_rows", "num_weight_rows", "seed",
                               "num_salts", "vocab_size", "num_head")] + [
    (name, "<i8", (MAX_HASHES,)) for name in (
        "token_offset", "token_radix", "token_stride", "weight_offset",
        "weight_radix", "weight_stride")]
SIGNATURE_DTYPE = np.dtype(_SIGNATURE_FIELDS)
SIGNATURE_BYTES = 824


@dataclasses.dataclass
class Signature:
    """memrec::Signature for tables of known sizes (FinishSignature done)."""

    num_hashes: int
    num_weight_hashes: int
    num_token_rows: int
    num_weight_rows: int
    seed: int = 0
    num_salts: int = 0
    vocab_size: int = 0
    num_head: int = 0

    def radix(self):
        """((token offsets, radices, strides), (weight ...)) or None."""
        if self.vocab_size <= 0:
            return None
        token = split_radix(self.num_head, self.num_token_rows - self.num_head,
                            self.num_hashes, max(1, self.vocab_size - self.num_head))
        weight = split_radix(0, self.num_weight_rows, self.num_weight_hashes,
                             self.vocab_size) if self.num_weight_hashes else ([], [], [])
        return token, weight

    def to_bytes(self, finished=True):
        """The C struct's bytes; finished=False leaves the derived fields 0."""
        record = np.zeros((), dtype=SIGNATURE_DTYPE)
        for name in ("num_hashes", "num_weight_hashes", "num_token_rows",
                     "num_weight_rows", "seed", "num_salts", "vocab_size", "num_head"):
            record[name] = getattr(self, name)
        radix = self.radix() if finished else None
        if radix is not None:
            for prefix, parts in (("token", radix[0]), ("weight", radix[1])):
                for field, values in zip(("offset", "radix", "stride"), parts):
                    record[f"{prefix}_{field}"][:len(values)] = values
        return record.tobytes()


def hash_row_of(h, rows):
    """HashRow's range reduction of the mixed words h (uint64) to [0, rows):
    multiply-shift of the top 32 bits below 2^32 rows, else the top 63 bits
    modulo rows."""
    if rows < (1 << 32):
        return ((h >> U64(32)) * U64(rows)) >> U64(32)
    return (h >> U64(1)) % U64(rows)


def hash_rows(ids, sig):
    """(token rows [N, k], weight rows [N, kw]) int64, as MemRecHashRows."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = ids.size
    k, kw = sig.num_hashes, sig.num_weight_hashes
    if sig.num_salts > 1:
        table = np.array([salt_key(sig.seed, s) for s in range(sig.num_salts)],
                         dtype=np.uint64)
        salts = table[np.arange(n, dtype=np.int64) % sig.num_salts]
    else:
        salts = np.full(n, salt_key(sig.seed, 0), dtype=np.uint64)
    keys = mix64(ids.view(np.uint64) ^ salts)

    def random_rows(stream, count, rows):
        out = np.empty((n, count), dtype=np.int64)
        with np.errstate(over="ignore"):
            for j in range(count):
                h = mix64(keys + U64(((j + 1) * stream) & MASK64))
                out[:, j] = hash_row_of(h, rows).astype(np.int64)
        return out

    token = random_rows(TOKEN_STREAM, k, sig.num_token_rows)
    weight = random_rows(WEIGHT_STREAM, kw, sig.num_weight_rows) if kw else \
        np.zeros((n, 0), dtype=np.int64)
    radix = sig.radix()
    if radix is not None:
        in_vocab = (ids >= 0) & (ids < sig.vocab_size)
        safe = np.where(in_vocab, ids, 0)
        (t_off, t_rad, t_str), (w_off, w_rad, w_str) = radix
        tail = np.maximum(safe - sig.num_head, 0)
        vocab_token = np.stack([o + (tail // s) % r for o, r, s in zip(t_off, t_rad, t_str)],
                               axis=1)
        vocab_token = np.where((safe < sig.num_head)[:, None], safe[:, None], vocab_token)
        token = np.where(in_vocab[:, None], vocab_token, token)
        if kw:
            vocab_weight = np.stack(
                [o + (safe // s) % r for o, r, s in zip(w_off, w_rad, w_str)], axis=1)
            weight = np.where(in_vocab[:, None], vocab_weight, weight)
    return token.astype(np.int64), weight.astype(np.int64)


def _bags(ids, row_splits, combiner):
    """(output row of each id, number of output rows)."""
    n = len(ids)
    if combiner == "none":
        return np.arange(n, dtype=np.int64), n
    splits = np.asarray(row_splits, dtype=np.int64)
    b = len(splits) - 1
    return np.repeat(np.arange(b, dtype=np.int64), np.diff(splits)), b


def _bag_scale(weights, out_row, num_rows, combiner):
    """Per output row: 1, 1 / sum(w) or 1 / sqrt(sum(w^2)); 0 for zero sums."""
    if combiner not in ("mean", "sqrtn"):
        return np.ones(num_rows)
    w = weights if combiner == "mean" else weights * weights
    total = np.zeros(num_rows)
    np.add.at(total, out_row, w)
    if combiner == "sqrtn":
        total = np.sqrt(total)
    with np.errstate(divide="ignore"):
        return np.where(total == 0, 0.0, 1.0 / np.where(total == 0, 1.0, total))


def _prepare(ids, row_splits, weights, token_table, weight_table, sig, combiner,
             per_hash, absolute):
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.size
    table = np.asarray(token_table, dtype=np.float64)
    wtable = np.asarray(weight_table, dtype=np.float64)
    w = np.ones(n) if weights is None or np.size(weights) == 0 else \
        np.asarray(weights, dtype=np.float64)
    out_row, num_rows = _bags(ids, row_splits, combiner)
    scale = _bag_scale(w, out_row, num_rows, combiner)
    if absolute:  # the same terms in absolute value: a bound for rounding
        table, wtable, w, scale = np.abs(table), np.abs(wtable), np.abs(w), np.abs(scale)
    token_rows, weight_rows = hash_rows(ids, sig)
    width = sig.num_hashes if per_hash else 1
    if sig.num_weight_hashes:
        alpha = wtable[weight_rows].sum(axis=1)  # [N, width]
    else:
        alpha = np.ones((n, width))
    # factor of slot (n, i): w * alpha[n, per_hash ? i : 0]
    slot_alpha = alpha if per_hash else np.repeat(alpha[:, :1], sig.num_hashes, axis=1)
    return dict(ids=ids, n=n, table=table, w=w, out_row=out_row, num_rows=num_rows,
                scale=scale, token_rows=token_rows, weight_rows=weight_rows,
                width=width, slot_alpha=slot_alpha)


def lookup(ids, row_splits, weights, token_table, weight_table, sig,
           combiner="sum", per_hash=False, absolute=False):
    """MemRecLookup in float64: [B, d] ([N, d] for combiner none).

    absolute=True evaluates the same sum over absolute values of its terms
    (|M|, |W|, |w|, |scale|), which bounds the rounding error of any order.
    """
    p = _prepare(ids, row_splits, weights, token_table, weight_table, sig, combiner,
                 per_hash, absolute)
    factor = p["w"][:, None] * p["slot_alpha"]  # [N, k]
    d = p["table"].shape[1]
    values = np.einsum("nk,nkd->nd", factor, p["table"][p["token_rows"]]) if p["n"] else \
        np.zeros((0, d))
    if combiner == "none":
        return values
    pooled = np.zeros((p["num_rows"], d))
    np.add.at(pooled, p["out_row"], values)
    return pooled * p["scale"][:, None]


def lookup_grad(grad, ids, row_splits, weights, token_table, weight_table, sig,
                combiner="sum", per_hash=False, absolute=False):
    """MemRecLookupGrad in float64: (token rows, token values [U, d],
    weight rows, weight values [Uw, width]); rows distinct and ascending."""
    p = _prepare(ids, row_splits, weights, token_table, weight_table, sig, combiner,
                 per_hash, absolute)
    grad = np.asarray(grad, dtype=np.float64)
    if absolute:
        grad = np.abs(grad)
    n, k, kw, width = p["n"], sig.num_hashes, sig.num_weight_hashes, p["width"]
    d = p["table"].shape[1]
    coef = p["w"] * p["scale"][p["out_row"]] if n else np.zeros(0)
    g = grad[p["out_row"]] if n else np.zeros((0, d))  # [N, d]
    # Token table: slot (n, i) adds coef[n] * alpha * grad[out_row[n]] to row h_i.
    rows = np.unique(p["token_rows"])
    values = np.zeros((rows.size, d))
    if n:
        contrib = (coef[:, None] * p["slot_alpha"])[:, :, None] * g[:, None, :]
        np.add.at(values, np.searchsorted(rows, p["token_rows"].reshape(-1)),
                  contrib.reshape(-1, d))
    # Weight table: entry (n, j) adds dots[n] to row g_j, where dots[n, c] is
    # coef * <grad row, M[h_c]> (per_hash) or coef * sum_i <grad row, M[h_i]>.
    if kw and n:
        dot = np.einsum("nd,nkd->nk", g, p["table"][p["token_rows"]])
        dots = coef[:, None] * (dot if per_hash else dot.sum(axis=1, keepdims=True))
        wrows = np.unique(p["weight_rows"])
        wvalues = np.zeros((wrows.size, width))
        np.add.at(wvalues, np.searchsorted(wrows, p["weight_rows"].reshape(-1)),
                  np.repeat(dots, kw, axis=0))
    else:
        wrows, wvalues = np.zeros(0, dtype=np.int64), np.zeros((0, width))
    return rows.astype(np.int64), values, wrows.astype(np.int64), wvalues


# The pinned vectors are those of tests/ops/test_hash_vectors.py, the project's
# hash contract (produced by the CPU MemRecHashRows op), read from that file so
# that there is one copy. These two cases are also printed, for reading:
# 'known' is among the pinned vectors; the vocabulary case is not.
SHOWN = [
    dict(signature=dict(num_hashes=3, num_weight_hashes=2, seed=7, num_salts=4),
         num_token_rows=1000, num_weight_rows=50, ids=[0, 1, -1]),
    dict(signature=dict(num_hashes=2, num_weight_hashes=1, seed=0, num_salts=0,
                        vocab_size=100, num_head=5),
         num_token_rows=30, num_weight_rows=20, ids=[0, 4, 5, 6, 99, 100, -3]),
]


def _contract_vectors():
    """The pinned vectors of tests/ops/test_hash_vectors.py (the project's hash
    contract), read without importing it (it needs TensorFlow); None when
    that file is not there."""
    import ast
    path = os.path.join(REPO, "tests", "ops", "test_hash_vectors.py")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "VECTORS" for t in node.targets):
            vectors = eval(compile(ast.Expression(node.value), path, "eval"),  # noqa: S307
                           {"__builtins__": {}, "dict": dict})
            return [dict(signature=v["signature"], num_token_rows=v["m"],
                         num_weight_rows=v["m_w"], ids=v["ids"], token=v["token_rows"],
                         weight=v["weight_rows"], name=v["name"]) for v in vectors]
    return None


def pinned_vectors():
    """The pinned vectors of tests/ops/test_hash_vectors.py ([] without it)."""
    return _contract_vectors() or []


def pinned_signature(case):
    return Signature(num_token_rows=case["num_token_rows"],
                     num_weight_rows=case["num_weight_rows"], **case["signature"])


def check_pinned_numpy():
    """Asserts the numpy hash against the pinned vectors; returns a report."""
    lines, wrong = [], []
    for case in SHOWN:
        token, weight = hash_rows(case["ids"], pinned_signature(case))
        lines.append(f"  {case['signature']} m={case['num_token_rows']} "
                     f"m_w={case['num_weight_rows']} ids {case['ids']} -> token "
                     f"{token.tolist()} weight {weight.tolist()}")
    vectors = pinned_vectors()
    if not vectors:
        lines.append("  WARNING: tests/ops/test_hash_vectors.py not found: no pinned vectors")
        return lines, ["tests/ops/test_hash_vectors.py missing"]
    for case in vectors:
        token, weight = hash_rows(case["ids"], pinned_signature(case))
        if token.tolist() != case["token"] or weight.tolist() != case["weight"]:
            wrong.append(case["name"])
            lines.append(f"  MISMATCH {case['name']}: numpy token {token.tolist()} weight "
                         f"{weight.tolist()}, pinned {case['token']} {case['weight']}")
    lines.append(f"  {len(vectors) - len(wrong)} of {len(vectors)} pinned vectors of "
                 f"tests/ops/test_hash_vectors.py reproduced by the numpy hash")
    return lines, wrong


# ------------------------------------------------------------ random inputs

def random_signature(rng, m, mw, vocab=False, k=None, kw=None):
    k = int(rng.integers(1, 5)) if k is None else k
    kw = int(rng.integers(0, 4)) if kw is None else kw
    sig = Signature(num_hashes=k, num_weight_hashes=kw, num_token_rows=m,
                    num_weight_rows=mw, seed=int(rng.integers(-2**40, 2**40)),
                    num_salts=int(rng.choice([0, 1, 3])))
    if vocab:
        sig.vocab_size = int(rng.integers(50, 400))
        sig.num_head = int(rng.integers(0, min(sig.vocab_size, m - k, 20) + 1))
    return sig


def random_ids(rng, n, sig, zipf=None):
    """Ids mixing small values, full-range int64 and (vocabulary) in-range ones."""
    if zipf:
        ids = rng.zipf(zipf, n).astype(np.int64)
    else:
        ids = rng.integers(-50, 1000, n, dtype=np.int64)
        wide = rng.random(n) < 0.2
        ids[wide] = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max,
                                 int(wide.sum()), dtype=np.int64)
    if sig.vocab_size:
        in_vocab = rng.random(n) < 0.7
        ids[in_vocab] = rng.integers(0, sig.vocab_size, int(in_vocab.sum()))
    return ids


def random_splits(rng, num_ids_hint, num_bags):
    """Bag lengths with ~15% empty bags and one long bag (several warps' chunks)."""
    lengths = rng.integers(1, 2 * max(1, num_ids_hint // max(1, num_bags)), num_bags)
    lengths[rng.random(num_bags) < 0.15] = 0
    if num_bags > 2:
        lengths[int(rng.integers(0, num_bags))] = int(rng.integers(70, 300))
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def random_weights(rng, n):
    w = rng.uniform(0.25, 1.5, n)
    w[rng.random(n) < 0.1] *= -1
    return w


# ----------------------------------------------------------------- self-test

def _directional_check(rng, combiner, per_hash, with_weights, vocab):
    """The gradient reference equals the exact directional derivative of the
    forward reference (the output is linear in each table)."""
    sig = random_signature(rng, 200, 17, vocab=vocab)
    n_bags = 12
    splits = random_splits(rng, 60, n_bags)
    n = int(splits[-1]) if combiner != "none" else 40
    ids = random_ids(rng, n, sig, zipf=1.3 if rng.random() < 0.5 else None)
    if combiner == "none":
        splits = np.zeros(0, dtype=np.int64)
    weights = random_weights(rng, n) if with_weights else None
    d, width = 5, sig.num_hashes if per_hash else 1
    table = rng.normal(size=(sig.num_token_rows, d))
    wtable = rng.normal(size=(sig.num_weight_rows, width))
    out = lookup(ids, splits, weights, table, wtable, sig, combiner, per_hash)
    grad = rng.normal(size=out.shape)
    rows, values, wrows, wvalues = lookup_grad(grad, ids, splits, weights, table, wtable,
                                               sig, combiner, per_hash)
    assert np.all(np.diff(rows) > 0) and np.all(np.diff(wrows) > 0)
    delta = rng.normal(size=table.shape)
    change = lookup(ids, splits, weights, table + delta, wtable, sig, combiner, per_hash) - out
    lhs, rhs = np.sum(grad * change), np.sum(values * delta[rows])
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs)), ("token", lhs, rhs)
    wdelta = rng.normal(size=wtable.shape)
    change = lookup(ids, splits, weights, table, wtable + wdelta, sig, combiner, per_hash) - out
    lhs = np.sum(grad * change)
    rhs = np.sum(wvalues * wdelta[wrows]) if wrows.size else 0.0
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs)), ("weight", lhs, rhs)


def self_test(seed):
    rng = np.random.default_rng(seed)
    print(f"self-test (numpy only), seed {seed}")
    assert SIGNATURE_DTYPE.itemsize == SIGNATURE_BYTES, SIGNATURE_DTYPE.itemsize
    count = 0
    for combiner in COMBINERS:
        for per_hash in (False, True):
            for with_weights in (False, True):
                for vocab in (False, True):
                    _directional_check(rng, combiner, per_hash, with_weights, vocab)
                    count += 1
    print(f"gradient reference = directional derivative of the forward reference: "
          f"{count} configurations")
    assert ChunkSizes.chunk_size(1) == 32 and ChunkSizes.chunk_size(1025) == 64
    # Last, so that a changed hash does not hide the checks above.
    print("pinned hash vectors:")
    lines, wrong = check_pinned_numpy()
    for line in lines:
        print(line)
    assert not wrong, "the numpy hash differs from pinned vectors: " + ", ".join(wrong)
    print("self-test passed")
    return 0


class ChunkSizes:
    """Host mirrors of the launch helpers of memrec_kernels_gpu.cuh."""

    WARP = 32
    THREADS = 256
    MAX_WARPS = 8
    STAGE_BUDGET = 32 * 1024
    MIN_CHUNK = 32
    MAX_GRID = 2**31 - 1

    @staticmethod
    def blocks_for(items, per_block):
        if items <= 0:
            return 0
        return min(-(-items // per_block), ChunkSizes.MAX_GRID)

    @staticmethod
    def stage_bytes(k, acc_bytes):
        return 32 * (k * (8 + acc_bytes) + acc_bytes)

    @staticmethod
    def lookup_warps(k, acc_bytes):
        return max(1, min(ChunkSizes.MAX_WARPS,
                          ChunkSizes.STAGE_BUDGET // ChunkSizes.stage_bytes(k, acc_bytes)))

    @staticmethod
    def chunk_size(length):
        size = ChunkSizes.MIN_CHUNK
        while size * size < length:
            size *= 2
        return size

    @staticmethod
    def max_chunks(segments, entries):
        return segments + entries // ChunkSizes.MIN_CHUNK


# ------------------------------------------------------------------ GPU part

def _to_bf16_bits(x):
    """float32 -> bfloat16 bits (round to nearest even), as uint16."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def _from_bf16_bits(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


DTYPES = {
    # name: (C type, accumulator C type, rtol against the absolute-sum bound,
    #        atol: one step of the type's subnormals, for outputs that round
    #        to them)
    "float32": ("float", "float", 2e-5, 0.0),
    "float64": ("double", "double", 1e-12, 0.0),
    "float16": ("__half", "float", 2e-3, 2.0**-24),
    "bfloat16": ("__nv_bfloat16", "float", 1e-2, 0.0),
}


def _cuda_include_dir():
    """A directory holding cuda_fp16.h for NVRTC, or None."""
    candidates = [os.environ.get(v) for v in ("CUDA_PATH", "CUDA_HOME", "CUDA_ROOT")]
    try:
        import cupy
        candidates.append(cupy.cuda.get_cuda_path())
    except Exception:  # noqa: BLE001 - any failure just means "not found"
        pass
    candidates += ["/usr/local/cuda"]
    for base in candidates:
        if base and os.path.exists(os.path.join(base, "include", "cuda_fp16.h")):
            return os.path.join(base, "include")
    try:  # pip-installed CUDA headers (nvidia-cuda-runtime-cu12 and the like)
        import nvidia  # noqa: F401
        for root in nvidia.__path__:
            for sub in ("cuda_runtime", "cu13", "cu12"):
                inc = os.path.join(root, sub, "include")
                if os.path.exists(os.path.join(inc, "cuda_fp16.h")):
                    return inc
    except ImportError:
        pass
    return None


# Token tables stored for serving (MemRecLookupQuantized): format -> (the
# DTYPES module that also compiles its forward kernels, C type of its rows).
# Their kernels sum in float32 into a float32 output, from float32 weights.
STORED_TABLES = {
    "int8": ("float32", "signed char"),
    "bfloat16": ("bfloat16", "__nv_bfloat16"),
}


def module_source(dtype):
    """(source, NVRTC options, {key: name expression}) of the kernels for one
    table type: memrec_kernels_gpu.cuh as it is, plus a test helper."""
    c_type, acc_type = DTYPES[dtype][:2]
    names = {
        "ids": f"memrec::gpu::LookupIdsKernel<{c_type}, {acc_type}>",
        "bags": f"memrec::gpu::LookupBagsKernel<{c_type}, {acc_type}>",
        "bag_scale": f"memrec::gpu::BagScaleKernel<{c_type}, {acc_type}>",
        "prep": f"memrec::gpu::GradPrepKernel<{c_type}, {acc_type}>",
        "token_meta": f"memrec::gpu::TokenEntryMetaKernel<{acc_type}>",
        "token_chunk": f"memrec::gpu::SegmentChunkKernel<{c_type}, {c_type}, {acc_type}>",
        "weight_chunk": f"memrec::gpu::SegmentChunkKernel<{acc_type}, {c_type}, {acc_type}>",
        "finalize": f"memrec::gpu::SegmentFinalizeKernel<{c_type}, {acc_type}>",
        "hash_rows": "memrec::gpu::HashRowsKernel",
        "flags": "memrec::gpu::SegmentFlagsKernel",
        "scatter": "memrec::gpu::SegmentScatterKernel",
        "chunk_count": "memrec::gpu::ChunkCountKernel",
        "weight_meta": "memrec::gpu::WeightEntryMetaKernel",
        "finish": "memrec_check_finish_signature",
    }
    for table_format, (module_dtype, c_table) in STORED_TABLES.items():
        if module_dtype == dtype:
            names[f"ids_{table_format}"] = \
                f"memrec::gpu::LookupIdsKernel<float, float, {c_table}>"
            names[f"bags_{table_format}"] = \
                f"memrec::gpu::LookupBagsKernel<float, float, {c_table}>"
    options = ["--std=c++17", "-I" + CUSTOM_OPS]
    prelude = ""
    if dtype in ("float16", "bfloat16"):
        include = _cuda_include_dir()
        if include is None:
            raise FileNotFoundError("cuda_fp16.h not found (set CUDA_PATH)")
        options.append("-I" + include)
        prelude = "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n"
    # CuPy caches binaries by source text: the digest of the included files
    # makes an edited header recompile.
    digest = hashlib.sha256()
    for name in ("memrec_math.h", KERNEL_HEADER):
        with open(os.path.join(CUSTOM_OPS, name), "rb") as f:
            digest.update(f.read())
    source = (f"// memrec sources sha256 {digest.hexdigest()}\n" + prelude +
              f'#include "{KERNEL_HEADER}"\n' + _TEST_HELPERS)
    return source, options, names


class GpuKernels:
    """The kernels of memrec_kernels_gpu.cuh for one table type, and host
    drivers that mirror memrec_kernels_gpu.cu.cc."""

    def __init__(self, cp, dtype):
        self.cp = cp
        self.dtype = dtype
        c_type, acc_type, self.rtol, self.atol = DTYPES[dtype]
        self.acc = np.float64 if acc_type == "double" else np.float32
        self.acc_bytes = 8 if acc_type == "double" else 4
        # Device storage: float16 as float16, bfloat16 as its uint16 bits.
        self.storage = {"float32": np.float32, "float64": np.float64,
                        "float16": np.float16, "bfloat16": np.uint16}[dtype]
        source, options, names = module_source(dtype)
        expressions = list(dict.fromkeys(names.values()))
        start = time.perf_counter()
        module = cp.RawModule(code=source, options=tuple(options),
                              name_expressions=expressions)
        self.fn = {key: module.get_function(expr) for key, expr in names.items()}
        self.compile_seconds = time.perf_counter() - start
        self.null = np.uint64(0)  # a null pointer argument
        self.poison = True  # fill outputs and scratch before launches

    # -- helpers
    def device_table(self, values):
        """Host float32/64 values -> (device array, float64 values as stored)."""
        if self.dtype == "bfloat16":
            bits = _to_bf16_bits(values)
            return self.cp.asarray(bits), _from_bf16_bits(bits).astype(np.float64)
        stored = np.asarray(values).astype(self.storage)
        return self.cp.asarray(stored), stored.astype(np.float64)

    def nan_filled(self, shape):
        """An output in the table type, NaN-filled unless timing."""
        if not self.poison:
            return self.cp.empty(shape, dtype=self.storage)
        if self.dtype == "bfloat16":
            return self.cp.full(shape, 0x7FC0, dtype=np.uint16)
        return self.cp.full(shape, np.nan, dtype=self.storage)

    def filled(self, shape, value, dtype):
        """A scratch buffer filled with `value` (NaN / -1) unless timing: what
        a kernel leaves unwritten then shows up."""
        if not self.poison:
            return self.cp.empty(shape, dtype=dtype)
        return self.cp.full(shape, value, dtype=dtype)

    def to_host(self, array):
        host = self.cp.asnumpy(array)
        if self.dtype == "bfloat16":
            return _from_bf16_bits(host).astype(np.float64)
        return host.astype(np.float64)

    def signature(self, sig):
        return self.cp.asarray(np.frombuffer(sig.to_bytes(), dtype=np.uint8))

    def launch(self, name, blocks, threads, args, shared=0, max_blocks=None):
        if blocks <= 0:
            return
        if max_blocks is not None:
            blocks = min(blocks, max_blocks)
        self.fn[name]((int(blocks),), (int(threads),), args, shared_mem=int(shared))

    # -- MemRecHashRows
    def hash_rows(self, sig_dev, sig, ids):
        cp = self.cp
        n = ids.size
        token = cp.full((n, sig.num_hashes), -1, dtype=np.int64)
        weight = cp.full((n, sig.num_weight_hashes), -1, dtype=np.int64)
        self.launch("hash_rows", ChunkSizes.blocks_for(n, 256), 256,
                    (sig_dev, np.int64(n), ids, token, weight))
        return token, weight

    # -- MemRecLookup (LookupFunctor<GPUDevice, T>), and MemRecLookupQuantized
    # (LookupFunctor<GPUDevice, float, Table>) when table_format is given
    def lookup(self, sig_dev, sig, ids, splits, weights, table, wtable, combiner,
               per_hash, max_blocks=None, table_format=None, scales=None):
        """The forward; with table_format (a STORED_TABLES format whose kernels
        this module holds), from `table` stored in that format with `scales`
        [m] float32 (int8) or None, float32 weights and wtable, into float32."""
        cp = self.cp
        n, d = ids.size, table.shape[1]
        num_rows = n if combiner == "none" else splits.size - 1
        out = self.nan_filled((num_rows, d)) if table_format is None else \
            self.filled((num_rows, d), np.nan, np.float32)
        if num_rows == 0 or d == 0:
            return out
        suffix = "" if table_format is None else "_" + table_format
        scales = scales if scales is not None else self.null
        k = sig.num_hashes
        warps = ChunkSizes.lookup_warps(k, self.acc_bytes)
        shared = warps * ChunkSizes.stage_bytes(k, self.acc_bytes)
        w = weights if weights is not None else self.null
        if combiner == "none":
            groups = -(-n // 32)
            self.launch("ids" + suffix, ChunkSizes.blocks_for(groups, warps), 32 * warps,
                        (sig_dev, np.int32(per_hash), np.int64(n), np.int64(d), ids, w,
                         table, scales, wtable, out), shared, max_blocks)
        else:
            self.launch("bags" + suffix, ChunkSizes.blocks_for(num_rows, warps),
                        32 * warps,
                        (sig_dev, np.int32(COMBINERS[combiner]), np.int32(per_hash),
                         np.int64(num_rows), np.int64(d), splits, ids, w, table, scales,
                         wtable, out), shared, max_blocks)
        return out

    # -- MemRecLookupGrad (LookupGradFunctor<GPUDevice, T>)
    def _segments(self, keys, entries):
        """Sorted keys/entries and the inclusive scan of the start flags."""
        cp = self.cp
        e = keys.size
        if e == 0:
            return None
        # (row, entry) pairs are distinct, so sorting them lexicographically
        # is the stable sort by row that CUB's radix sort performs.
        order = cp.lexsort(cp.stack([entries, keys]))
        sorted_keys, sorted_entries = keys[order], entries[order]
        flags = cp.empty(e, dtype=np.int64)
        self.launch("flags", ChunkSizes.blocks_for(e, 256), 256,
                    (np.int64(e), sorted_keys, flags))
        return sorted_keys, sorted_entries, cp.cumsum(flags)

    def _reduce(self, segs, num_segments, cols, source, rows, values, meta, chunk_name,
                max_blocks):
        cp = self.cp
        if segs is None:
            return
        sorted_keys, sorted_entries, segment_ids = segs
        e = sorted_keys.size
        segment_start = self.filled(num_segments + 1, -1, np.int64)
        chunk_count = self.filled(num_segments + 1, -1, np.int64)
        self.launch("scatter", ChunkSizes.blocks_for(e, 256), 256,
                    (np.int64(e), sorted_keys, segment_ids, segment_start, rows),
                    max_blocks=max_blocks)
        self.launch("chunk_count", ChunkSizes.blocks_for(num_segments + 1, 256), 256,
                    (np.int64(num_segments), segment_start, chunk_count),
                    max_blocks=max_blocks)
        chunk_start = cp.cumsum(chunk_count) - chunk_count  # exclusive scan
        factor, offset = meta(sorted_entries)
        if cols == 0:
            return
        max_chunks = ChunkSizes.max_chunks(num_segments, e)
        partial = self.filled(max_chunks * cols, np.nan, self.acc)
        self.launch(chunk_name, ChunkSizes.blocks_for(max_chunks, 8), 256,
                    (np.int64(num_segments), np.int64(cols), segment_start, chunk_start,
                     factor if factor is not None else self.null, offset, source, values,
                     partial), max_blocks=max_blocks)
        self.launch("finalize", ChunkSizes.blocks_for(num_segments, 8), 256,
                    (np.int64(num_segments), np.int64(cols), chunk_start, partial, values),
                    max_blocks=max_blocks)

    def lookup_grad(self, sig_dev, sig, grad, ids, splits, weights, table, wtable,
                    combiner, per_hash, max_blocks=None):
        cp = self.cp
        n, d = ids.size, table.shape[1]
        k, kw = sig.num_hashes, sig.num_weight_hashes
        width = k if per_hash else 1
        acc = self.acc
        if n == 0:
            return (cp.zeros(0, np.int64), self.nan_filled((0, d)),
                    cp.zeros(0, np.int64), self.nan_filled((0, width)))
        num_bags = n if combiner == "none" else splits.size - 1
        w = weights if weights is not None else self.null
        bag_scale = None
        if combiner in ("mean", "sqrtn"):
            bag_scale = self.filled(num_bags, np.nan, acc)
            self.launch("bag_scale", ChunkSizes.blocks_for(num_bags, 256), 256,
                        (np.int32(COMBINERS[combiner]), np.int64(num_bags), splits, w,
                         bag_scale), max_blocks=max_blocks)
        token_keys = self.filled(n * k, -1, np.int64)
        token_entries = self.filled(n * k, -1, np.int64)
        weight_keys = self.filled(n * kw, -1, np.int64)
        weight_entries = self.filled(n * kw, -1, np.int64)
        coef = self.filled(n, np.nan, acc)
        out_row = self.filled(n, -1, np.int64)
        alpha = self.filled(n * width, np.nan, acc)
        dots = self.filled(n * width, np.nan, acc) if kw else None
        self.launch("prep", ChunkSizes.blocks_for(-(-n // 32), 8), 256,
                    (sig_dev, np.int32(COMBINERS[combiner]), np.int32(per_hash),
                     np.int64(n), np.int64(num_bags), np.int64(d),
                     splits if combiner != "none" else self.null, ids, w,
                     bag_scale if bag_scale is not None else self.null, table, wtable,
                     grad, token_keys, token_entries, weight_keys, weight_entries, coef,
                     out_row, alpha, dots if dots is not None else self.null),
                    max_blocks=max_blocks)
        token = self._segments(token_keys, token_entries)
        weight = self._segments(weight_keys, weight_entries) if kw else None
        # The host synchronisation of the op: the distinct row counts.
        u = int(token[2][-1]) if token is not None else 0
        uw = int(weight[2][-1]) if weight is not None else 0
        rows = self.filled(u, -1, np.int64)
        values = self.nan_filled((u, d))
        wrows = self.filled(uw, -1, np.int64)
        wvalues = self.nan_filled((uw, width))

        def token_meta(sorted_entries):
            e = sorted_entries.size
            factor = self.filled(e, np.nan, acc)
            offset = self.filled(e, -1, np.int64)
            self.launch("token_meta", ChunkSizes.blocks_for(e, 256), 256,
                        (np.int64(e), np.int32(k), np.int32(per_hash), np.int64(d),
                         sorted_entries, coef, alpha, out_row, factor, offset),
                        max_blocks=max_blocks)
            return factor, offset

        def weight_meta(sorted_entries):
            e = sorted_entries.size
            offset = self.filled(e, -1, np.int64)
            self.launch("weight_meta", ChunkSizes.blocks_for(e, 256), 256,
                        (np.int64(e), np.int32(kw), np.int32(width), sorted_entries,
                         offset), max_blocks=max_blocks)
            return None, offset

        self._reduce(token, u, d, grad, rows, values, token_meta, "token_chunk",
                     max_blocks)
        self._reduce(weight, uw, width, dots, wrows, wvalues, weight_meta,
                     "weight_chunk", max_blocks)
        return rows, values, wrows, wvalues


_TEST_HELPERS = r"""
// Test only: FinishSignature on the device, to compare with the host's.
extern "C" __global__ void memrec_check_finish_signature(memrec::Signature* s) {
  if (blockIdx.x == 0 && threadIdx.x == 0) memrec::FinishSignature(s);
}
"""


class Checker:
    """Collects check results; prints one line per failure."""

    def __init__(self):
        self.passed = 0
        self.failed = []

    def exact(self, name, got, want):
        if np.array_equal(np.asarray(got), np.asarray(want)):
            self.passed += 1
            return True
        self.failed.append(name)
        print(f"FAIL {name}: got {np.asarray(got)[:8]} want {np.asarray(want)[:8]}")
        return False

    def close(self, name, got, ref, bound, rtol, atol=0.0):
        got = np.asarray(got, dtype=np.float64)
        if got.shape != ref.shape:
            self.failed.append(name)
            print(f"FAIL {name}: shape {got.shape} != {ref.shape}")
            return False
        if np.isnan(got).any():
            self.failed.append(name)
            print(f"FAIL {name}: {int(np.isnan(got).sum())} NaN (unwritten) elements")
            return False
        tiny = 1e-300
        err = np.abs(got - ref)
        if np.any(err > rtol * bound + atol + tiny):
            worst = np.unravel_index(np.argmax(err / (bound + tiny)), err.shape)
            self.failed.append(name)
            print(f"FAIL {name}: at {worst} got {got[worst]} want {ref[worst]} "
                  f"(bound {bound[worst]}, rtol {rtol}, atol {atol})")
            return False
        self.passed += 1
        return True


def run_case(cp, kernels, checker, rng, label, sig, combiner, per_hash, with_weights,
             n_ids, n_bags, d, zipf=None, ids=None, splits=None, determinism=False):
    """One forward + gradient + hash-rows check against the numpy reference."""
    width = sig.num_hashes if per_hash else 1
    if combiner == "none":
        splits = np.zeros(0, dtype=np.int64)
    elif splits is None:
        splits = random_splits(rng, n_ids, n_bags)
    n = (int(splits[-1]) if combiner != "none" else n_ids) if ids is None else ids.size
    if ids is None:
        ids = random_ids(rng, n, sig, zipf)
    weights = random_weights(rng, n) if with_weights else None
    if combiner == "mean" and with_weights and n_bags > 1 and splits.size > 2:
        # A bag whose weights cancel pools to zeros (BagScale's zero case).
        lo, hi = int(splits[0]), int(splits[1])
        if hi - lo >= 2:
            weights[lo:hi] = 0.0
            weights[lo], weights[lo + 1] = 0.5, -0.5
    table_d, table = kernels.device_table(rng.normal(size=(sig.num_token_rows, d)))
    wtable_d, wtable = kernels.device_table(rng.normal(size=(sig.num_weight_rows, width)))
    if weights is not None:
        weights_d, weights = kernels.device_table(weights)
    else:
        weights_d = None
    ids_d = cp.asarray(ids)
    splits_d = cp.asarray(splits) if combiner != "none" else None
    sig_d = kernels.signature(sig)
    name = f"{kernels.dtype} {label} {combiner} {'per_hash' if per_hash else 'scalar'}" \
           f"{' weighted' if with_weights else ''}{' vocab' if sig.vocab_size else ''} " \
           f"k={sig.num_hashes} kw={sig.num_weight_hashes} N={n} d={d}"

    token_ref, weight_ref = hash_rows(ids, sig)
    token_d, weight_d = kernels.hash_rows(sig_d, sig, ids_d)
    checker.exact(name + " hash token rows", cp.asnumpy(token_d), token_ref)
    checker.exact(name + " hash weight rows", cp.asnumpy(weight_d), weight_ref)

    out = kernels.lookup(sig_d, sig, ids_d, splits_d, weights_d, table_d, wtable_d,
                         combiner, per_hash)
    cp.cuda.Device().synchronize()
    ref = lookup(ids, splits, weights, table, wtable, sig, combiner, per_hash)
    bound = lookup(ids, splits, weights, table, wtable, sig, combiner, per_hash,
                   absolute=True)
    checker.close(name + " forward", kernels.to_host(out), ref, bound, kernels.rtol,
                  kernels.atol)

    grad_host = rng.normal(size=ref.shape)
    grad_d, grad = kernels.device_table(grad_host)
    got = kernels.lookup_grad(sig_d, sig, grad_d, ids_d, splits_d, weights_d, table_d,
                              wtable_d, combiner, per_hash)
    cp.cuda.Device().synchronize()
    rows, values, wrows, wvalues = lookup_grad(grad, ids, splits, weights, table, wtable,
                                               sig, combiner, per_hash)
    _, vbound, _, wbound = lookup_grad(grad, ids, splits, weights, table, wtable, sig,
                                       combiner, per_hash, absolute=True)
    checker.exact(name + " grad token rows", cp.asnumpy(got[0]), rows)
    checker.close(name + " grad token values", kernels.to_host(got[1]), values, vbound,
                  kernels.rtol, kernels.atol)
    checker.exact(name + " grad weight rows", cp.asnumpy(got[2]), wrows)
    checker.close(name + " grad weight values", kernels.to_host(got[3]), wvalues, wbound,
                  kernels.rtol, kernels.atol)
    if determinism:
        # Same bits again, and with a grid of 2 blocks (every grid-stride loop
        # then runs many rounds): the sums do not depend on the launch.
        for max_blocks in (None, 2):
            again = kernels.lookup_grad(sig_d, sig, grad_d, ids_d, splits_d, weights_d,
                                        table_d, wtable_d, combiner, per_hash, max_blocks)
            for part in (1, 3):
                checker.exact(f"{name} grad bitwise repeat (max_blocks={max_blocks}) "
                              f"part {part}", cp.asnumpy(again[part]).view(np.uint8),
                              cp.asnumpy(got[part]).view(np.uint8))
            fwd = kernels.lookup(sig_d, sig, ids_d, splits_d, weights_d, table_d,
                                 wtable_d, combiner, per_hash, max_blocks)
            checker.exact(f"{name} forward bitwise repeat (max_blocks={max_blocks})",
                          cp.asnumpy(fwd).view(np.uint8), cp.asnumpy(out).view(np.uint8))
    return name


def correctness(cp, kernels, checker, rng):
    dtype = kernels.dtype
    full = dtype in ("float32", "float64")
    # The matrix: every combiner x weight mode x weights x signature kind.
    for combiner in COMBINERS:
        for per_hash in (False, True):
            for with_weights in (False, True):
                for vocab in (False, True):
                    if not full and vocab and not with_weights:
                        continue
                    sig = random_signature(rng, 1000, 64, vocab=vocab)
                    run_case(cp, kernels, checker, rng, "matrix", sig, combiner,
                             per_hash, with_weights, n_ids=600, n_bags=40,
                             d=int(rng.choice([8, 64])))
    if not full:
        return
    # Column passes and partial warps: d = 1, 33, 200 (> 128: two passes).
    for d in (1, 33, 200):
        for combiner in ("none", "sum"):
            sig = random_signature(rng, 500, 40)
            run_case(cp, kernels, checker, rng, "width", sig, combiner, True, True,
                     n_ids=300, n_bags=20, d=d)
    # Zipf ids: rows hit thousands of times (multi-chunk rows), and repeat runs.
    sig = random_signature(rng, 4096, 256, k=2, kw=2)
    run_case(cp, kernels, checker, rng, "zipf", sig, "sum", True, True, n_ids=20000,
             n_bags=800, d=64, zipf=1.1, determinism=True)
    sig = random_signature(rng, 4096, 256, k=3, kw=1)
    run_case(cp, kernels, checker, rng, "zipf", sig, "none", False, False, n_ids=30000,
             n_bags=0, d=32, zipf=1.05, determinism=True)
    # One id everywhere: each of its rows is hit 6000 times.
    sig = random_signature(rng, 512, 16, k=2, kw=1)
    run_case(cp, kernels, checker, rng, "same id", sig, "mean", False, True,
             n_ids=6000, n_bags=0, d=48, ids=np.full(6000, 42, dtype=np.int64),
             splits=np.array([0, 2500, 2500, 6000], dtype=np.int64))
    # Largest signature: k = kw = 16 (the staging area shrinks the blocks).
    sig = random_signature(rng, 2000, 300, k=16, kw=16)
    run_case(cp, kernels, checker, rng, "k=16", sig, "sqrtn", True, True, n_ids=400,
             n_bags=30, d=64)
    # Empty inputs: no ids at all, and bags that are all empty.
    sig = random_signature(rng, 100, 10)
    run_case(cp, kernels, checker, rng, "empty", sig, "none", False, False, n_ids=0,
             n_bags=0, d=16)
    run_case(cp, kernels, checker, rng, "empty bags", sig, "sum", False, False,
             n_ids=0, n_bags=3, d=16, ids=np.zeros(0, dtype=np.int64),
             splits=np.zeros(4, dtype=np.int64))


def stored_rows(table_format, table):
    """(rows as stored, float32 [m] scales or None, float32 rows they read as),
    as memrec_tf/ops/quantize.py stores and reads them (numpy only)."""
    table = np.asarray(table, dtype=np.float32)
    if table_format == "bfloat16":
        bits = _to_bf16_bits(table)
        return bits, None, _from_bf16_bits(bits)
    scales = (np.abs(table).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scales == 0, np.float32(1), scales)[:, None]
    q = np.clip(np.round(np.where(scales[:, None] == 0, 0, table / safe)), -127, 127)
    q = q.astype(np.int8)
    return q, scales, q.astype(np.float32) * scales[:, None]  # float32 products


def run_stored_case(cp, stored, plain, checker, rng, table_format, label, sig, combiner,
                    per_hash, with_weights, n_ids, n_bags, d, ids=None, splits=None):
    """The forward from a stored table (kernels of `stored`) against the float32
    forward (kernels of `plain`, float32) on the rows it reads back: the same
    bits. Both against the numpy reference too."""
    width = sig.num_hashes if per_hash else 1
    if combiner == "none":
        splits = np.zeros(0, dtype=np.int64)
    elif splits is None:
        splits = random_splits(rng, n_ids, n_bags)
    n = (int(splits[-1]) if combiner != "none" else n_ids) if ids is None else ids.size
    if ids is None:
        ids = random_ids(rng, n, sig)
    weights = random_weights(rng, n).astype(np.float32) if with_weights else None
    table = rng.normal(size=(sig.num_token_rows, d)).astype(np.float32)
    table[rng.random(sig.num_token_rows) < 0.05] = 0.0  # rows of zeros: scale 0
    values, scales, read = stored_rows(table_format, table)
    wtable = rng.normal(size=(sig.num_weight_rows, width)).astype(np.float32)
    sig_d = plain.signature(sig)
    ids_d = cp.asarray(ids)
    splits_d = cp.asarray(splits) if combiner != "none" else None
    weights_d = cp.asarray(weights) if weights is not None else None
    wtable_d = cp.asarray(wtable)
    name = f"{table_format} rows {label} {combiner} {'per_hash' if per_hash else 'scalar'}" \
           f"{' weighted' if with_weights else ''}{' vocab' if sig.vocab_size else ''} " \
           f"k={sig.num_hashes} kw={sig.num_weight_hashes} N={n} d={d}"
    scales_d = cp.asarray(scales) if scales is not None else None
    got = stored.lookup(sig_d, sig, ids_d, splits_d, weights_d, cp.asarray(values),
                        wtable_d, combiner, per_hash, table_format=table_format,
                        scales=scales_d)
    want = plain.lookup(sig_d, sig, ids_d, splits_d, weights_d, cp.asarray(read), wtable_d,
                        combiner, per_hash)
    cp.cuda.Device().synchronize()
    got, want = cp.asnumpy(got), cp.asnumpy(want)
    ref = lookup(ids, splits, weights, read, wtable, sig, combiner, per_hash)
    bound = lookup(ids, splits, weights, read, wtable, sig, combiner, per_hash,
                   absolute=True)
    checker.close(name + " forward", got, ref, bound, DTYPES["float32"][2])
    if got.dtype != np.float32 or got.shape != want.shape:
        checker.failed.append(name + " output dtype/shape")
        print(f"FAIL {name}: output {got.dtype} {got.shape}, float32 path {want.shape}")
        return
    checker.exact(name + " forward = float32 forward on the rows read back (bits)",
                  got.view(np.uint32), want.view(np.uint32))


def stored_correctness(cp, kernels_by_type, checker, rng):
    """The forward from every stored format whose kernels were compiled."""
    plain = kernels_by_type.get("float32")
    if plain is None:
        return
    for table_format, (module_dtype, _) in STORED_TABLES.items():
        stored = kernels_by_type.get(module_dtype)
        if stored is None:
            print(f"SKIPPED {table_format} rows: the {module_dtype} kernels were not built")
            continue
        before = checker.passed + len(checker.failed)
        for combiner in COMBINERS:
            for per_hash in (False, True):
                for with_weights in (False, True):
                    for vocab in (False, True):
                        sig = random_signature(rng, 1000, 64, vocab=vocab)
                        run_stored_case(cp, stored, plain, checker, rng, table_format,
                                        "matrix", sig, combiner, per_hash, with_weights,
                                        n_ids=600, n_bags=40, d=int(rng.choice([8, 64])))
        # Column passes, partial warps, the largest signature, empty inputs.
        for d in (1, 33, 200):
            sig = random_signature(rng, 500, 40)
            run_stored_case(cp, stored, plain, checker, rng, table_format, "width", sig,
                            "sum", True, True, n_ids=300, n_bags=20, d=d)
        sig = random_signature(rng, 2000, 300, k=16, kw=16)
        run_stored_case(cp, stored, plain, checker, rng, table_format, "k=16", sig, "mean",
                        True, True, n_ids=400, n_bags=30, d=64)
        sig = random_signature(rng, 100, 10)
        run_stored_case(cp, stored, plain, checker, rng, table_format, "empty", sig, "none",
                        False, False, n_ids=0, n_bags=0, d=16)
        run_stored_case(cp, stored, plain, checker, rng, table_format, "empty bags", sig,
                        "sqrtn", False, False, n_ids=0, n_bags=3, d=16,
                        ids=np.zeros(0, dtype=np.int64), splits=np.zeros(4, dtype=np.int64))
        print(f"{table_format} rows: {checker.passed + len(checker.failed) - before} checks, "
              f"{len(checker.failed)} failed so far")


def check_signature_and_pinned(cp, kernels, checker):
    for case in pinned_vectors():
        sig = pinned_signature(case)
        # FinishSignature on the device gives the bytes the host computed.
        raw = cp.asarray(np.frombuffer(sig.to_bytes(finished=False), dtype=np.uint8))
        kernels.fn["finish"]((1,), (1,), (raw,))
        checker.exact(f"FinishSignature {case['signature']}",
                      cp.asnumpy(raw), np.frombuffer(sig.to_bytes(), dtype=np.uint8))
        token, weight = kernels.hash_rows(kernels.signature(sig), sig,
                                          cp.asarray(np.array(case["ids"], np.int64)))
        got_t, got_w = cp.asnumpy(token).tolist(), cp.asnumpy(weight).tolist()
        label = case["name"]
        if label == "known":
            print(f"  GPU hash rows, pinned vector 'known' {case['ids']}: token {got_t} "
                  f"weight {got_w}")
        checker.exact(f"pinned token rows {label}", got_t, case["token"])
        checker.exact(f"pinned weight rows {label}", got_w, case["weight"])


# ----------------------------------------------------------------- benchmark

def _median_ms(cp, fn, warmup=5, runs=25):
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(runs):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def _torch_median_ms(torch, fn, warmup=5, runs=25):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def benchmark(cp, kernels, checker, rng, skip_torch=False):
    bags, per_bag, d, k, kw, m, mw = 4096, 26, 64, 2, 1, 2**16, 2**14
    n = bags * per_bag
    sig = Signature(num_hashes=k, num_weight_hashes=kw, num_token_rows=m,
                    num_weight_rows=mw, seed=11, num_salts=per_bag)
    ids = rng.zipf(1.1, n).astype(np.int64)
    ids_d = cp.asarray(ids)
    splits = np.arange(0, n + 1, per_bag, dtype=np.int64)
    splits_d = cp.asarray(splits)
    table_d, table = kernels.device_table(rng.normal(size=(m, d)).astype(np.float32))
    wtable_d, wtable = kernels.device_table(rng.normal(size=(mw, 1)).astype(np.float32))
    sig_d = kernels.signature(sig)
    grad_d = cp.asarray(rng.normal(size=(n, d)).astype(np.float32))
    rows = []

    def forward():
        return kernels.lookup(sig_d, sig, ids_d, None, None, table_d, wtable_d, "none",
                              False)

    def forward_sum():
        return kernels.lookup(sig_d, sig, ids_d, splits_d, None, table_d, wtable_d, "sum",
                              False)

    def forward_backward():
        forward()
        return kernels.lookup_grad(sig_d, sig, grad_d, ids_d, None, None, table_d,
                                   wtable_d, "none", False)

    # The timed configuration is checked too.
    out = forward()
    ref = lookup(ids, None, None, table, wtable, sig, "none", False)
    bound = lookup(ids, None, None, table, wtable, sig, "none", False, absolute=True)
    checker.close("benchmark forward output", kernels.to_host(out), ref, bound,
                  kernels.rtol)
    del out

    kernels.poison = False  # no NaN fills inside the timed region
    try:
        fwd_ms = _median_ms(cp, forward)
        sum_ms = _median_ms(cp, forward_sum)
        fb_ms = _median_ms(cp, forward_backward, warmup=3, runs=21)
    finally:
        kernels.poison = True
    moved = 8 * n + 4 * n * k * d + 4 * n * kw + 4 * n * d
    fwd_gbs = moved / (fwd_ms * 1e-3) / 1e9

    # Device-to-device copy bandwidth, same run (read + write bytes).
    size = 1 << 30
    src = cp.empty(size // 4, dtype=np.float32)
    src.fill(1.0)
    dst = cp.empty_like(src)
    copy_ms = _median_ms(cp, lambda: cp.cuda.runtime.memcpyAsync(
        dst.data.ptr, src.data.ptr, size, cp.cuda.runtime.memcpyDeviceToDevice,
        cp.cuda.get_current_stream().ptr), warmup=3, runs=21)
    copy_gbs = 2 * size / (copy_ms * 1e-3) / 1e9
    del src, dst
    cp.get_default_memory_pool().free_all_blocks()

    rows.append(("memrec forward, combiner none [106496, 64]", fwd_ms,
                 f"{fwd_gbs:.0f} GB/s = {fwd_gbs / copy_gbs:.2f} x copy"))
    rows.append(("memrec forward, combiner sum [4096, 64]", sum_ms, ""))
    rows.append(("memrec forward + backward (CuPy-driven)", fb_ms,
                 "incl. host sync + Python launches"))
    rows.append(("device-to-device copy, 1 GiB", copy_ms, f"{copy_gbs:.0f} GB/s"))

    if not skip_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = None
            rows.append(("torch peer", float("nan"), "torch not importable: skipped"))
        if torch is not None:
            dev = torch.device("cuda")
            big = torch.empty((40_000_000, d), device=dev, dtype=torch.float32)
            big.normal_()
            t_ids = torch.as_tensor(ids % 40_000_000, device=dev)
            offsets = torch.arange(0, n, per_bag, device=dev)
            t_grad = torch.randn((n, d), device=dev)
            emb_ms = _torch_median_ms(torch, lambda: F.embedding(t_ids, big))
            bag_ms = _torch_median_ms(
                torch, lambda: F.embedding_bag(t_ids, big, offsets, mode="sum"))
            leaf = big.requires_grad_(True)

            def torch_fb():
                leaf.grad = None
                F.embedding(t_ids, leaf, sparse=True).backward(t_grad)
                return leaf.grad.coalesce()  # distinct rows, summed: our output

            fb_torch_ms = _torch_median_ms(torch, torch_fb, warmup=3, runs=21)
            rows.append(("torch F.embedding, 40M x 64 table", emb_ms,
                         f"memrec speedup {emb_ms / fwd_ms:.2f} x"))
            rows.append(("torch F.embedding_bag sum, 40M x 64", bag_ms,
                         f"memrec (sum) speedup {bag_ms / sum_ms:.2f} x"))
            rows.append(("torch embedding fwd+bwd (sparse, coalesced)", fb_torch_ms,
                         f"memrec speedup {fb_torch_ms / fb_ms:.2f} x"))
            del big, leaf, t_ids, t_grad
            torch.cuda.empty_cache()
    return rows, dict(n=n, d=d, k=k, kw=kw, m=m, mw=mw, moved=moved)


LAST_FAILURES = []  # names of the failed checks of the last gpu_main (for tests)


def gpu_main(args):
    try:
        import cupy as cp
    except ImportError:
        print("CuPy is not installed: the GPU check needs CuPy (and a GPU). "
              "Use --self-test on a machine without a GPU.")
        return 2
    seed = args.seed if args.seed is not None else int(time.time_ns() % 2**31)
    print(f"random seed {seed} (repeat with --seed {seed})")
    rng = np.random.default_rng(seed)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    print(f"device {props['name'].decode()}, CuPy {cp.__version__}, "
          f"CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, "
          f"NVRTC {'.'.join(map(str, cp.cuda.nvrtc.getVersion()))}")
    print("numpy reference, pinned hash vectors:")
    checker = Checker()
    lines, wrong = check_pinned_numpy()
    for line in lines:
        print(line)
    for label in wrong:
        checker.failed.append(f"numpy hash vs pinned vector {label}")
    started = time.perf_counter()
    kernels_by_type = {}
    for dtype in args.dtypes:
        try:
            kernels = GpuKernels(cp, dtype)
        except FileNotFoundError as e:
            print(f"SKIPPED {dtype}: {e}")
            continue
        print(f"{dtype}: compiled {KERNEL_HEADER} with NVRTC in "
              f"{kernels.compile_seconds:.1f} s")
        kernels_by_type[dtype] = kernels
        if dtype == "float32":
            check_signature_and_pinned(cp, kernels, checker)
        before = checker.passed + len(checker.failed)
        correctness(cp, kernels, checker, rng)
        print(f"{dtype}: {checker.passed + len(checker.failed) - before} checks, "
              f"{len(checker.failed)} failed so far")
    stored_correctness(cp, kernels_by_type, checker, rng)
    print(f"correctness: {checker.passed} passed, {len(checker.failed)} failed "
          f"({time.perf_counter() - started:.1f} s)")
    if not args.no_benchmark and "float32" in kernels_by_type:
        rows, shape = benchmark(cp, kernels_by_type["float32"], checker, rng,
                                skip_torch=args.no_torch)
        print()
        print(f"float32, {shape['n']} ids (4096 bags x 26), d={shape['d']}, "
              f"k={shape['k']}, kw={shape['kw']}, m=2^16, m_w=2^14, Zipf(1.1) ids; "
              f"median of >= 21 runs (CUDA events)")
        print(f"forward bytes moved: ids + token rows + weight rows + output = "
              f"{shape['moved'] / 1e6:.1f} MB")
        print(f"{'what':<46} {'ms':>9}  notes")
        print("-" * 90)
        for what, ms, note in rows:
            print(f"{what:<46} {ms:>9.4f}  {note}")
        print()
    LAST_FAILURES[:] = checker.failed
    if checker.failed:
        print(f"FAILED: {len(checker.failed)} check(s): " + "; ".join(checker.failed[:10]))
        return 1
    print(f"all {checker.passed} checks passed")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", "--cpu-reference-only", dest="self_test",
                        action="store_true",
                        help="check the numpy reference only (no GPU, no CuPy)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES),
                        choices=list(DTYPES))
    parser.add_argument("--no-benchmark", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    if args.self_test:
        seed = args.seed if args.seed is not None else int(time.time_ns() % 2**31)
        return self_test(seed)
    return gpu_main(args)


if __name__ == "__main__":
    sys.exit(main())
