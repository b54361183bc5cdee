"""Which rows a value uses: the settings shared by the fused op and the
built-in-ops path, and the constants of the hash (see custom_ops/memrec_math.h).
"""
import dataclasses
import operator

MAX_HASHES = 16
_MASK64 = (1 << 64) - 1

# Stream constants and mixing multipliers of memrec_math.h, as unsigned ints.
TOKEN_STREAM = 0x9E3779B97F4A7C15
WEIGHT_STREAM = 0xD1B54A32D192ED03
SALT_STREAM = 0xC2B2AE3D27D4EB4F
MIX_MUL1 = 0xBF58476D1CE4E5B9
MIX_MUL2 = 0x94D049BB133111EB


def as_int64(value):
    """The int64 whose two's-complement bits are the unsigned `value`."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _wrap64(z):
    return z & _MASK64


def mix64(z, shift_right=operator.rshift, constant=int, wrap=_wrap64):
    """splitmix64's finaliser, the one mix of every hash in memrec_tf.

    Written once for any 64-bit integer type: Python ints (the defaults),
    numpy uint64 arrays (`constant=np.uint64`, `wrap` the identity) and
    TensorFlow int64 tensors (a logical `shift_right`, int64 constants).

    Args:
      z: the values.
      shift_right: (z, bits) -> z shifted right, filling with zeros.
      constant: the type of the multipliers, from their unsigned value.
      wrap: reduces a value to 64 bits (the identity for wrapping types).
    """
    z = wrap(z)
    z = z ^ shift_right(z, 30)
    z = wrap(z * constant(MIX_MUL1))
    z = z ^ shift_right(z, 27)
    z = wrap(z * constant(MIX_MUL2))
    return z ^ shift_right(z, 31)


def salt_key(seed, salt):
    """The constant mixed into every id of (seed, salt), unsigned."""
    return mix64(_wrap64((seed & _MASK64) + mix64(_wrap64(salt + SALT_STREAM))))


def least_root(limit, parts):
    """The least r >= 1 with r ** parts >= limit."""
    lo, hi = 1, max(1, limit)
    while lo < hi:
        mid = (lo + hi) // 2
        if mid ** parts >= limit:
            hi = mid
        else:
            lo = mid + 1
    return lo


def split_radix(first_row, rows, parts, limit):
    """Segments of `rows` rows for `parts` mixed-radix digits below `limit`.

    Returns (offsets, radices, strides), exactly as memrec_math.h's
    SplitRadix: when the rows allow unique digit combinations, the later
    digits get the fewest rows that still do and the first all the rest;
    otherwise an even split. Strides are capped at `limit`.
    """
    root = least_root(limit, parts)
    if parts > 1 and root <= rows // parts:
        radices = [rows - (parts - 1) * root] + [root] * (parts - 1)
        for i in range(parts - 1, 0, -1):
            others = 1
            for j in range(parts):
                if j != i:
                    others = min(others * radices[j], limit)
            need = -(-limit // others)
            radices[0] += radices[i] - need
            radices[i] = need
    else:
        radices = [rows // parts + (1 if i < rows % parts else 0) for i in range(parts)]
    offsets, strides = [], []
    nxt, prefix = first_row, 1
    for radix in radices:
        offsets.append(nxt)
        strides.append(prefix)
        nxt += radix
        prefix = min(prefix * radix, limit)
    return offsets, radices, strides


@dataclasses.dataclass(frozen=True)
class Signature:
    """The attributes that fix which table rows each value reads.

    Attributes:
      num_hashes: k, token-table rows per value (1..16).
      num_weight_hashes: kw, weight-table rows per value (0..16, 0: alpha = 1).
      seed: seeds every hash.
      num_salts: > 1: the value at flat position p is salted with p % num_salts
        (the columns of a dense [B, F] input are F separate features).
      vocab_size: > 0: ids in [0, vocab_size) take collision-free mixed-radix
        signatures; other ids fall back to the random hashes.
      num_head: with a vocabulary, ids below num_head own one token row each.
    """

    num_hashes: int = 2
    num_weight_hashes: int = 1
    seed: int = 0
    num_salts: int = 0
    vocab_size: int = 0
    num_head: int = 0

    def validate(self, num_token_rows, num_weight_rows):
        """Raises ValueError naming the first setting that cannot work."""
        if not 1 <= self.num_hashes <= MAX_HASHES:
            raise ValueError(f"num_hashes must be in [1, {MAX_HASHES}]: {self.num_hashes}")
        if not 0 <= self.num_weight_hashes <= MAX_HASHES:
            raise ValueError(
                f"num_weight_hashes must be in [0, {MAX_HASHES}]: {self.num_weight_hashes}")
        if num_token_rows < 1:
            raise ValueError(f"num_token_rows must be >= 1: {num_token_rows}")
        if self.num_weight_hashes > 0 and num_weight_rows < 1:
            raise ValueError(
                f"num_weight_rows must be >= 1 when num_weight_hashes > 0: {num_weight_rows}")
        if self.num_salts < 0:
            raise ValueError(f"num_salts must be >= 0: {self.num_salts}")
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0: {self.vocab_size}")
        if not 0 <= self.num_head <= self.vocab_size:
            raise ValueError(
                f"num_head must be in [0, vocab_size={self.vocab_size}]: {self.num_head}")
        if self.vocab_size > 0:
            if num_token_rows - self.num_head < self.num_hashes:
                raise ValueError(
                    f"num_token_rows={num_token_rows} is too small for a vocabulary "
                    f"signature: it needs at least num_head + num_hashes = "
                    f"{self.num_head + self.num_hashes}")
            if num_weight_rows < self.num_weight_hashes:
                raise ValueError(
                    f"num_weight_rows={num_weight_rows} is too small for a vocabulary "
                    f"signature: it needs at least num_weight_hashes = "
                    f"{self.num_weight_hashes}")

    def op_attrs(self):
        """The attributes of the fused ops, by name (the fields' own names)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_op(cls, op):
        """The signature of a fused op in a graph, read from its attributes."""
        return cls(**{field.name: op.get_attr(field.name) for field in dataclasses.fields(cls)})

    def token_limit(self):
        """Tail indices (id - num_head) of vocabulary ids lie in [0, token_limit)."""
        return max(1, self.vocab_size - self.num_head)

    def token_radix(self, num_token_rows):
        return split_radix(self.num_head, num_token_rows - self.num_head,
                           self.num_hashes, self.token_limit())

    def weight_radix(self, num_weight_rows):
        return split_radix(0, num_weight_rows, self.num_weight_hashes, self.vocab_size)
