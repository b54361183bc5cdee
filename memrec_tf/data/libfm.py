"""libFM / SVMlight-style files: `label idx:val idx:val ...`.

Labels may be -1/1 or 0/1 (floats such as "1.0" too); -1 maps to 0. With a
field count F, every line must hold exactly F pairs, one per field in a
fixed order, and `features["categorical"]` is the [B, F] int64 of their
indices (libFM indices are global across fields, so they are used as ids
as they are). Values: by default each must be 1 (one-hot data such as
Frappe); a line with another value is rejected rather than silently
treated as 1. With `with_values=True` any finite value is allowed and kept
in `features["weights"]` (float32 [B, F]).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from memrec_tf.data import _fastparse
from memrec_tf.data import arrays as arrays_lib
from memrec_tf.data import paths as paths_lib
from memrec_tf.data._lines import (MAX_LINE_BYTES, BadLine, LineReader, LongLine,
                                   iter_line_blocks, show)
from memrec_tf.features import FeatureSpec
from memrec_tf.data.vocab import Vocabulary

FRAPPE_FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
                 "weather", "country", "city")
FRAPPE_CARDINALITIES = (957, 4082, 7, 7, 2, 3, 2, 9, 80, 233)  # 5,382 in all

_LABELS = {b"1": 1.0, b"+1": 1.0, b"0": 0.0, b"-1": 0.0}
_MAX_ID = 1 << 63


def _label(token: bytes) -> float:
    value = _LABELS.get(token)
    if value is not None:
        return value
    try:
        number = float(token)
    except ValueError:
        number = None
    if number == 1.0:
        return 1.0
    if number in (0.0, -1.0):
        return 0.0
    raise BadLine(f"label {show(token)} is not -1, 0 or 1")


class LibFMReader(LineReader):
    """Streams libFM files as `(features, label)` batches.

    `features["dense"]` is float32 [B, 0] (libFM has no dense block here).

    Args:
      paths: One file or a list (read in order; `.gz` decompressed).
      num_fields: Pairs per line, F. None: taken from the first non-empty
        line of the first file.
      field_names: F names for the spec (default "field1".."fieldF").
      cardinalities: Optional F field sizes; then field f's index must lie in
        [offset_f, offset_f + cardinalities[f]) with offsets their
        cumulative sum (libFM's global numbering), else the line is rejected.
      with_values: Keep values in features["weights"] instead of requiring
        every value to be 1.
      batch_size: Rows per batch.
      on_error: "skip" or "raise".
      max_reported: How many rejected lines `stats.rejects` keeps.
      max_line_bytes: Longest line accepted, in bytes (default 16 MiB); a
        longer one is rejected as malformed without being held in memory.

    Raises:
      ValueError: If `num_fields` is None and the first file has no pairs, or
        the names / cardinalities do not have F entries.
    """

    def __init__(self, paths, *, num_fields: Optional[int] = None,
                 field_names: Optional[Sequence[str]] = None,
                 cardinalities: Optional[Sequence[int]] = None, with_values: bool = False,
                 batch_size: int = 4096, on_error: str = "skip", max_reported: int = 20,
                 max_line_bytes: int = MAX_LINE_BYTES):
        super().__init__(paths, batch_size=batch_size, on_error=on_error,
                         max_reported=max_reported, max_line_bytes=max_line_bytes)
        if num_fields is None:
            num_fields = self._sniff_num_fields()
        self.num_fields = int(num_fields)
        if self.num_fields < 1:
            raise ValueError(f"num_fields must be >= 1, got {num_fields}")
        names = tuple(field_names) if field_names is not None else tuple(
            f"field{i + 1}" for i in range(self.num_fields))
        if len(names) != self.num_fields:
            raise ValueError(f"{len(names)} field names for {self.num_fields} fields")
        self.with_values = bool(with_values)
        self._ranges = None
        if cardinalities is not None:
            cards = [int(c) for c in cardinalities]
            if len(cards) != self.num_fields:
                raise ValueError(f"{len(cards)} cardinalities for {self.num_fields} fields")
            starts = np.concatenate([[0], np.cumsum(cards)[:-1]]).tolist()
            self._ranges = [(s, s + c) for s, c in zip(starts, cards)]
        self.spec = FeatureSpec(
            dense_names=(), categorical_names=names,
            cardinalities=tuple(cardinalities) if cardinalities is not None else None,
            id_encoding="index" if cardinalities is not None else "raw",
            vocabulary_size=int(sum(cardinalities)) if cardinalities is not None else 0,
            extra_features=("weights",) if self.with_values else ())

    def _sniff_num_fields(self) -> int:
        with paths_lib.open_binary(self.paths[0]) as fh:
            for block, _ in iter_line_blocks(fh, max_line_bytes=self.max_line_bytes):
                if isinstance(block, LongLine):
                    continue
                for raw in block.split(b"\n"):
                    parts = raw.split()
                    if parts:
                        return len(parts) - 1
        raise ValueError(f"cannot infer num_fields: {self.paths[0]} has no non-empty line; "
                         "pass num_fields=")

    def _diagnose(self, pairs) -> str:
        for pos, pair in enumerate(pairs, 1):
            idx, sep, val = pair.partition(b":")
            if not sep or b":" in val:
                return f"pair {pos} {show(pair)} is not idx:val"
            try:
                index = int(idx)
            except ValueError:
                index = -1
            if not 0 <= index < _MAX_ID:
                return f"pair {pos} {show(pair)}: index {show(idx)} is not an integer in [0, 2**63)"
            try:
                value = float(val)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                return f"pair {pos} {show(pair)}: value {show(val)} is not a finite number"
            if not self.with_values and value != 1.0:
                return (f"pair {pos} {show(pair)}: value {show(val)} is not 1 "
                        "(pass with_values=True to keep values)")
            if self._ranges is not None:
                lo, hi = self._ranges[pos - 1]
                if not lo <= index < hi:
                    return (f"pair {pos} {show(pair)}: index {index} is outside field {pos}'s "
                            f"range [{lo}, {hi})")
        return "unparseable line"

    def _parse(self, raw: bytes):
        parts = raw.split()
        if not parts:
            raise BadLine("empty line")
        label = _label(parts[0])
        pairs = parts[1:]
        if len(pairs) != self.num_fields:
            raise BadLine(f"expected {self.num_fields} idx:val pairs, found {len(pairs)}")
        try:
            split = [p.split(b":") for p in pairs]
            index = [int(i) for i, _ in split]
            if self.with_values:
                values = [float(v) for _, v in split]
                ok = all(map(math.isfinite, values))
            else:
                values = None
                ok = all(v == b"1" or float(v) == 1.0 for _, v in split)
            ok = ok and min(index) >= 0 and max(index) < _MAX_ID
            if ok and self._ranges is not None:
                ok = all(lo <= i < hi for i, (lo, hi) in zip(index, self._ranges))
        except ValueError:
            ok = False
        if not ok:
            raise BadLine(self._diagnose(pairs))
        # One flat tuple of atoms per row: the garbage collector stops
        # tracking those, where lists would be scanned again and again.
        return (label, *index, *values) if values is not None else (label, *index)

    def _make_batch(self, rows):
        n, f = len(rows), self.num_fields
        columns = list(zip(*rows))
        features = {"dense": np.zeros([n, 0], np.float32),
                    "categorical": np.ascontiguousarray(np.array(columns[1:1 + f], np.int64).T)}
        if self.with_values:
            features["weights"] = np.ascontiguousarray(np.array(columns[1 + f:], np.float32).T)
        return features, np.array(columns[0], np.float32)

    def _parse_block(self, block, n_lines):
        if self.with_values:
            return None
        parsed = _fastparse.parse_libfm_onehot(block, n_lines, self.num_fields, self._ranges)
        if parsed is None:
            return None
        label, index = parsed
        return {"dense": np.zeros([n_lines, 0], np.float32), "categorical": index}, label


def frappe_reader(path, **kwargs) -> LibFMReader:
    """A `LibFMReader` for a Frappe file (10 named fields, range-checked).

    Args:
      path: A Frappe libFM file.
      **kwargs: Passed to `LibFMReader` (batch_size, on_error, ...).

    Returns:
      The reader.
    """
    return LibFMReader(path, num_fields=len(FRAPPE_FIELDS), field_names=FRAPPE_FIELDS,
                       cardinalities=FRAPPE_CARDINALITIES, **kwargs)


def load_frappe(data_dir=None, *, dev_fraction: float = 0.0, seed: int = 0) -> arrays_lib.ArrayData:
    """Loads Frappe (57,722 + 28,860 rows) into numpy arrays.

    Splits: "train" is `frappe.validation.libfm` and "test" is
    `frappe.test.libfm` (the usual validation -> test protocol); with
    `dev_fraction` > 0 a random "dev" split is cut from "train".
    "categorical" and "index" are both the global libFM indices, already
    dense in [0, 5382) with field f in its own block; there is no OOV slot.

    Args:
      data_dir: Folder holding `frappe/`; default `paths.data_dir()`.
      dev_fraction: Share of the train file moved to "dev".
      seed: Seed of that cut.

    Returns:
      The `ArrayData`.

    Raises:
      FileNotFoundError: If a file is missing.
      MalformedLineError: On any malformed line.
    """
    root = paths_lib.data_dir(data_dir) / "frappe"
    raw = {}
    for split, name in (("train", "frappe.validation.libfm"), ("test", "frappe.test.libfm")):
        path = paths_lib.require_file(root / name)
        raw[split] = frappe_reader(path, batch_size=1 << 16, on_error="raise").read_all()
    if dev_fraction > 0:
        raw = arrays_lib.carve_split(raw, "train", "dev", dev_fraction, seed)
    spec = FeatureSpec(dense_names=(), categorical_names=FRAPPE_FIELDS,
                       cardinalities=FRAPPE_CARDINALITIES, id_encoding="index")
    return arrays_lib.ArrayData.from_raw(spec, raw,
                                         vocabulary=Vocabulary.ranges(FRAPPE_CARDINALITIES))
