"""Plain numpy references for the tests: the MEM-REC formula and the hash.

Two independent pieces:

- `lookup`: the pooled formula in float64, given the rows each id reads
  (taken from the fused MemRecHashRows op or from `core.hash_rows`), so that
  output tests check the arithmetic and not the hash.
- `hash_rows`: the whole hash (Mix64, SaltKey, IdKey, HashRow and the
  mixed-radix vocabulary signatures) on numpy uint64, written from
  custom_ops/memrec_math.h without TensorFlow and without importing
  memrec_tf, so that it cross-checks both implementations, constants included.
"""
import numpy as np

# The radix layout is plain integer arithmetic shared with the core path; the
# hash below is this file's own, to check the op against.
from memrec_tf.ops.signature import split_radix

MASK64 = (1 << 64) - 1

# The constants of memrec_math.h, copied here on purpose (not imported from
# memrec_tf.ops.signature): a change on either side must break a test.
TOKEN_STREAM = 0x9E3779B97F4A7C15
WEIGHT_STREAM = 0xD1B54A32D192ED03
SALT_STREAM = 0xC2B2AE3D27D4EB4F
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _u64(value):
    """A Python int (any sign) as a numpy uint64 array of its low 64 bits."""
    return np.asarray(int(value) & MASK64, dtype=np.uint64)


def mix64(z):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z = z * _MUL1
        z = z ^ (z >> np.uint64(27))
        z = z * _MUL2
        z = z ^ (z >> np.uint64(31))
    return z


def salt_key(seed, salt):
    """SaltKey(seed, salt) as a uint64 array."""
    with np.errstate(over="ignore"):
        return mix64(_u64(seed) + mix64(_u64(salt) + _u64(SALT_STREAM)))


def id_keys(ids, seed, num_salts):
    """PositionKey of every flat position: IdKey(id, SaltKey(seed, salt(p)))."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1).view(np.uint64)
    if num_salts > 1:
        table = np.stack([salt_key(seed, s) for s in range(num_salts)])
        salts = table[np.arange(ids.size) % num_salts]
    else:
        salts = salt_key(seed, 0)
    return mix64(ids ^ salts)


def hash_row(keys, stream, j, rows):
    """HashRow(key, stream, j, rows).

    Below 2^32 rows: multiply-shift of the top 32 bits of the mix,
    ((h >> 32) * rows) >> 32; from 2^32 rows on: the top 63 bits modulo rows.
    """
    with np.errstate(over="ignore"):
        h = mix64(keys + _u64((j + 1) * stream))
        if rows < 1 << 32:
            return (((h >> np.uint64(32)) * np.uint64(rows)) >> np.uint64(32)).astype(np.int64)
    return ((h >> np.uint64(1)) % np.uint64(rows)).astype(np.int64)


def _radix_rows(index, radix):
    offsets, radices, strides = radix
    return np.stack([o + (index // s) % r for o, r, s in zip(offsets, radices, strides)],
                    axis=1).astype(np.int64)


def hash_rows(ids, num_hashes, num_weight_hashes, num_token_rows, num_weight_rows,
              seed=0, num_salts=0, vocab_size=0, num_head=0):
    """(token rows [N, k], weight rows [N, kw]) as int64 numpy arrays."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n, k, kw = ids.size, num_hashes, num_weight_hashes
    keys = id_keys(ids, seed, num_salts)
    token = np.zeros([n, k], np.int64)
    weight = np.zeros([n, kw], np.int64)
    for i in range(k):
        token[:, i] = hash_row(keys, TOKEN_STREAM, i, num_token_rows)
    for j in range(kw):
        weight[:, j] = hash_row(keys, WEIGHT_STREAM, j, num_weight_rows)
    if vocab_size > 0:
        in_vocab = (ids >= 0) & (ids < vocab_size)
        v = ids[in_vocab]
        # Token digits index the tail v - num_head, so they range below
        # vocab_size - num_head (at least 1).
        tail = _radix_rows(np.maximum(v - num_head, 0),
                           split_radix(num_head, num_token_rows - num_head, k,
                                       max(1, vocab_size - num_head)))
        token_vocab = np.where((v < num_head)[:, None], np.repeat(v[:, None], k, axis=1), tail)
        token[in_vocab] = token_vocab
        if kw > 0:
            weight[in_vocab] = _radix_rows(v, split_radix(0, num_weight_rows, kw, vocab_size))
    return token, weight


def hash_rows_for(ids, signature, num_token_rows, num_weight_rows):
    """`hash_rows` with the settings of a memrec_tf Signature (read by attribute)."""
    return hash_rows(ids, signature.num_hashes, signature.num_weight_hashes, num_token_rows,
                     num_weight_rows, seed=signature.seed, num_salts=signature.num_salts,
                     vocab_size=signature.vocab_size, num_head=signature.num_head)


def embed(token_table, weight_table, token_rows, weight_rows, weight_mode):
    """z(x) of every id, [N, d] float64."""
    table = np.asarray(token_table, np.float64)
    wtable = np.asarray(weight_table, np.float64)
    token_rows = np.asarray(token_rows, np.int64)
    weight_rows = np.asarray(weight_rows, np.int64)
    n, k = token_rows.shape
    width = k if weight_mode == "per_hash" else 1
    if weight_rows.shape[1] == 0:
        alpha = np.ones([n, width])
    else:
        alpha = wtable[weight_rows].sum(axis=1)  # [N, width]
    rows = table[token_rows]  # [N, k, d]
    if weight_mode == "per_hash":
        return (alpha[:, :, None] * rows).sum(axis=1)
    return alpha * rows.sum(axis=1)


def lookup(row_splits, weights, token_table, weight_table, token_rows, weight_rows,
           combiner="sum", weight_mode="scalar"):
    """The MemRecLookup output in float64.

    Args:
      row_splits: [B + 1] bag offsets (ignored for combiner "none").
      weights: [N] per-id weights, or None / empty for all ones.
      token_table, weight_table: the tables (any float dtype).
      token_rows, weight_rows: [N, k] and [N, kw] rows each id reads.
      combiner: "none", "sum", "mean" or "sqrtn".
      weight_mode: "scalar" or "per_hash".
    """
    z = embed(token_table, weight_table, token_rows, weight_rows, weight_mode)
    n = z.shape[0]
    d = np.asarray(token_table).shape[1]
    w = np.ones(n) if weights is None or np.size(weights) == 0 else np.asarray(
        weights, np.float64)
    if combiner == "none":
        return z * w[:, None]
    splits = np.asarray(row_splits, np.int64)
    out = np.zeros([splits.size - 1, d])
    for b in range(splits.size - 1):
        lo, hi = splits[b], splits[b + 1]
        pooled = (w[lo:hi, None] * z[lo:hi]).sum(axis=0)
        if combiner == "mean":
            denom = w[lo:hi].sum()
        elif combiner == "sqrtn":
            denom = np.sqrt((w[lo:hi] ** 2).sum())
        else:
            denom = 1.0
        out[b] = 0.0 if denom == 0 else pooled / denom
    return out


INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)


def random_ids(rng, n, extremes=True):
    """n int64 ids mixing small, negative, arbitrary and (optionally) near-limit values."""
    pools = [rng.integers(0, 50, size=n), rng.integers(-5, 5, size=n),
             rng.integers(INT64_MIN, INT64_MAX, size=n, dtype=np.int64, endpoint=True)]
    if extremes:
        pools.append(rng.choice(np.array([INT64_MIN, INT64_MIN + 1, INT64_MAX - 1, INT64_MAX],
                                         np.int64), size=n))
    which = rng.integers(0, len(pools), size=n)
    return np.stack([p.astype(np.int64) for p in pools])[which, np.arange(n)]
