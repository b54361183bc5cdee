"""Vectorised parse of whole blocks of lines (the readers' fast path).

A block's bytes are viewed as a numpy array; field boundaries come from the
positions of separator bytes, and each number is read from a right-aligned
window of digits by Horner's rule, all fields at once. Anything unusual
(wrong field count, a non-digit, non-ASCII bytes, a long field) makes a
parser return None; the reader then parses that block line by line, which
defines the result and reports bad lines. So each parser here only needs to
be right on the inputs it accepts, listed in its docstring.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import numpy as np

_PAD = 24  # >= the widest digit window read below (18 digits + sign)
_BAD = 255
_TAB, _NL, _SPACE, _COLON = 9, 10, 32, 58


def _digit_table(alphabet: bytes) -> np.ndarray:
    table = np.full(256, _BAD, np.uint8)
    for value, char in enumerate(alphabet):
        table[char] = value
    return table


_DEC = _digit_table(b"0123456789")
_HEX = _digit_table(b"0123456789abcdef")
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


class _Fields:
    """Field boundaries of a block with a fixed number of fields per line."""

    def __init__(self, buf: np.ndarray, separators: np.ndarray, n_lines: int, fields: int):
        # A leading pad keeps every digit window's index >= 0; its digits
        # are masked out.
        self.padded = np.empty(buf.size + _PAD, np.uint8)
        self.padded[:_PAD] = ord("0")
        self.padded[_PAD:] = buf
        starts = np.empty(fields * n_lines, np.int64)
        starts[0] = 0
        starts[1:] = separators + 1
        ends = np.empty(fields * n_lines, np.int64)
        ends[:-1] = separators
        ends[-1] = buf.size
        starts = starts.reshape(n_lines, fields)
        self.ends = ends.reshape(n_lines, fields) + _PAD  # padded coordinates
        self.lens = self.ends - _PAD - starts

    def first_char(self, ends, lens):
        return self.padded[ends - lens]

    def numbers(self, ends, lens, table, base, max_width):
        """Values of the fields ending at `ends` with `lens` digits.

        Returns:
          int64 values shaped like `ends`, or None if some field is longer
          than `max_width` or holds a character outside `table`.
        """
        width = int(lens.max()) if lens.size else 0
        if width > max_width:
            return None
        # [width, rows, cols]: position k of every right-aligned window, so
        # each Horner step reads one contiguous slab.
        digits = table[self.padded[ends[None] + np.arange(-width, 0)[:, None, None]]]
        values = np.zeros(ends.shape, np.int64)
        bad = np.zeros(ends.shape, bool)
        for k in range(width):
            digit = np.where(lens < width - k, 0, digits[k])  # 0 before the field
            bad |= digit == _BAD
            values *= base
            values += digit
        return None if bad.any() else values

    def signed_decimals(self, ends, lens):
        """Decimal integers with an optional leading "-" (1-18 digits)."""
        negative = (lens > 1) & (self.first_char(ends, lens) == ord("-"))
        values = self.numbers(ends, lens - negative, _DEC, 10, 18)
        if values is None:
            return None
        return np.where(negative, -values, values)


def _split_fixed(buf: np.ndarray, separators: np.ndarray, n_lines: int,
                 fields: int) -> Optional[_Fields]:
    """Fields of a block if every line has exactly `fields` fields."""
    if separators.size != fields * n_lines - 1:
        return None
    newlines = np.flatnonzero(buf[separators] == _NL)
    if not np.array_equal(newlines, np.arange(fields - 1, separators.size, fields)):
        return None
    return _Fields(buf, separators, n_lines, fields)


def _ascii_buffer(block: bytes) -> Optional[np.ndarray]:
    buf = np.frombuffer(block, np.uint8)
    if buf.size == 0 or int(buf.max()) >= 128:
        return None
    return buf


def parse_criteo(block: bytes, n_lines: int, num_integer: int, num_categorical: int,
                 empty_id: int) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Parses `n_lines` Criteo lines joined by b"\\n" (CRLF allowed).

    Accepts only: label "0"/"1"; integers of 1-18 decimal digits with an
    optional leading "-"; hex strings of 1-15 digits (either case); empty
    fields.

    Returns:
      `(label float32 [N], integers int64 [N, num_integer], ids int64
      [N, num_categorical])`, or None when the block needs the line by line
      path.
    """
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    buf = _ascii_buffer(block)
    if buf is None:
        return None
    fields = 1 + num_integer + num_categorical
    f = _split_fixed(buf, np.flatnonzero((buf == _TAB) | (buf == _NL)), n_lines, fields)
    if f is None:
        return None
    label_char = f.padded[f.ends[:, 0] - 1]
    if not ((f.lens[:, 0] == 1) & ((label_char == ord("0")) | (label_char == ord("1")))).all():
        return None
    integers = f.signed_decimals(f.ends[:, 1:1 + num_integer], f.lens[:, 1:1 + num_integer])
    if integers is None:
        return None
    cat_len = f.lens[:, 1 + num_integer:]
    ids = f.numbers(f.ends[:, 1 + num_integer:], cat_len, _HEX, 16, 15)
    if ids is None:
        return None
    ids[cat_len == 0] = empty_id
    return (label_char == ord("1")).astype(np.float32), integers, ids


_TRAILING_BLANKS = re.compile(rb"[ \t\r]+(?=\n|\Z)")


def parse_libfm_onehot(block: bytes, n_lines: int, num_fields: int,
                       ranges: Optional[Sequence[Tuple[int, int]]]
                       ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Parses `n_lines` libFM lines whose values are all 1.

    Accepts only lines `label idx:1 ... idx:1` with exactly `num_fields`
    pairs, single spaces between tokens (trailing blanks and CR allowed),
    label one of 1, +1, 0, -1, and indices of 1-18 decimal digits (inside
    `ranges` when given).

    Returns:
      `(label float32 [N], index int64 [N, num_fields])`, or None when the
      block needs the line by line path.
    """
    block = _TRAILING_BLANKS.sub(b"", block)
    if b"\t" in block or b"  " in block or b"\n " in block or block.startswith(b" "):
        return None
    buf = _ascii_buffer(block)
    if buf is None:
        return None
    f = _split_fixed(buf, np.flatnonzero((buf == _SPACE) | (buf == _NL)), n_lines,
                     1 + num_fields)
    if f is None:
        return None
    label_len, label_end = f.lens[:, 0], f.ends[:, 0]
    last = f.padded[label_end - 1]
    sign = f.padded[label_end - 2]
    one = (last == ord("1")) & ((label_len == 1) | ((label_len == 2) & (sign == ord("+"))))
    zero = ((label_len == 1) & (last == ord("0"))) | (
        (label_len == 2) & (sign == ord("-")) & (last == ord("1")))
    if not (one | zero).all():
        return None
    ends, lens = f.ends[:, 1:], f.lens[:, 1:]
    # Each pair must end in ":1"; the index is what precedes it.
    if not ((lens >= 3) & (f.padded[ends - 1] == ord("1"))
            & (f.padded[ends - 2] == _COLON)).all():
        return None
    index = f.numbers(ends - 2, lens - 2, _DEC, 10, 18)
    if index is None:
        return None
    if ranges is not None:
        lo = np.array([r[0] for r in ranges], np.int64)
        hi = np.array([r[1] for r in ranges], np.int64)
        if not ((index >= lo) & (index < hi)).all():
            return None
    return one.astype(np.float32), index
