"""Headed CSV/TSV click logs (Avazu, TalkingData, ...) with a column spec.

A `ColumnSpec` (or its string form
`"label=click,categorical=C1,C14,site_id,numeric=hour"`) names the label
column, the categorical columns and the numeric columns; other columns are
ignored. Each file's header is matched by name, so files may order their
columns differently. A typed header such as RecBole's `rating:float` also
matches the bare name `rating`.

Encoding:
  * categorical: any string -> int64 by `hashing.hash_strings` (FarmHash
    Fingerprint64 of `column + "\\x1f" + value` with the default
    `hash_with_column=True`); empty -> `EMPTY_ID` (-1).
  * numeric: float32; empty -> 0; optional `numeric_transform="log1p"`
    applies log(1 + max(x, 0)).
  * label: must read 0 or 1 (also "0.0"/"1.0"), unless `label_threshold`
    is given, in which case label = (float(value) >= label_threshold).

Fields are split on the delimiter; a line holding a double quote is split
with Python's `csv` module instead, so quoted fields may contain the
delimiter (not newlines).
"""
from __future__ import annotations

import csv
import math
from typing import Optional

import numpy as np
import tensorflow as tf

from memrec_tf.data import stats as stats_lib
from memrec_tf.data._lines import MAX_LINE_BYTES, BadLine, LineReader, show, utf8_problem
from memrec_tf.data.hashing import hash_strings, hash_strings_tf
from memrec_tf.data.columns import as_column_spec
from memrec_tf.features import FeatureSpec

_DELIMITERS = ("\t", ",", ";", "|")
_TRANSFORMS = (None, "none", "log1p")


def sniff_delimiter(header: str) -> str:
    """The candidate (tab, comma, semicolon, pipe) most frequent in `header`.

    Raises:
      ValueError: If the header holds none of them.
    """
    counts = [(header.count(d), -i, d) for i, d in enumerate(_DELIMITERS)]
    best = max(counts)
    if best[0] == 0:
        raise ValueError(f"cannot detect the delimiter of header {header[:80]!r}: it has no "
                         "tab, comma, semicolon or pipe; pass delimiter=")
    return best[2]


def _column_index(header_names, wanted: str) -> Optional[int]:
    if wanted in header_names:
        return header_names.index(wanted)
    base = [h.split(":", 1)[0] for h in header_names]
    return base.index(wanted) if wanted in base else None


class CSVReader(LineReader):
    """Streams headed CSV/TSV files as `(features, label)` batches.

    Args:
      paths: One file or a list (read in order; `.gz` decompressed); every
        file starts with a header line.
      columns: A `ColumnSpec`, its string form, or a dict with keys
        "label", "categorical", "numeric".
      delimiter: Field separator; None detects it from each header.
      label_threshold: Binarise the label as value >= threshold (e.g. 4 for
        ratings); None requires 0/1.
      numeric_transform: None or "log1p".
      hash_with_column: Salt categorical hashes with the column name.
      batch_size: Rows per batch.
      on_error: "skip" or "raise" (a bad or incomplete header always
        raises).
      max_reported: How many rejected lines `stats.rejects` keeps.
      max_line_bytes: Longest line accepted, in bytes (default 16 MiB); a
        longer one is rejected as malformed without being held in memory
        (a longer header always raises).
    """

    def __init__(self, paths, columns, *, delimiter: Optional[str] = None,
                 label_threshold: Optional[float] = None,
                 numeric_transform: Optional[str] = None, hash_with_column: bool = True,
                 batch_size: int = 4096, on_error: str = "skip", max_reported: int = 20,
                 max_line_bytes: int = MAX_LINE_BYTES):
        super().__init__(paths, batch_size=batch_size, on_error=on_error,
                         max_reported=max_reported, max_line_bytes=max_line_bytes)
        self.columns = as_column_spec(columns)
        if delimiter is not None and len(delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {delimiter!r}")
        if numeric_transform not in _TRANSFORMS:
            raise ValueError(f"numeric_transform must be one of {_TRANSFORMS}, "
                             f"got {numeric_transform!r}")
        self.delimiter = delimiter
        self.label_threshold = None if label_threshold is None else float(label_threshold)
        self.numeric_transform = numeric_transform
        self.hash_with_column = bool(hash_with_column)
        self.spec = FeatureSpec(dense_names=self.columns.numeric,
                                categorical_names=self.columns.categorical,
                                label_name=self.columns.label, id_encoding="hash")
        self._salt = self.columns.categorical if self.hash_with_column else None
        self._layout = None

    # Header ----------------------------------------------------------------

    def _start_file(self, path, fh, counts):
        raw = fh.readline(self.max_line_bytes + 1)
        if not raw:
            raise ValueError(f"{path} is empty: expected a header line")
        if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
            raise stats_lib.MalformedLineError(
                path, 1, f"header: line longer than {self.max_line_bytes} bytes "
                "(see max_line_bytes)")
        raw = raw.rstrip(b"\r\n")
        problem = utf8_problem(raw)
        if problem:
            raise stats_lib.MalformedLineError(path, 1, f"header: {problem}")
        header = raw.decode("utf-8").lstrip("\ufeff")
        delimiter = self.delimiter or sniff_delimiter(header)
        names = [h.strip() for h in next(csv.reader([header], delimiter=delimiter))]
        cols = self.columns
        wanted = [cols.label, *cols.categorical, *cols.numeric]
        found = {w: _column_index(names, w) for w in wanted}
        missing = [w for w, i in found.items() if i is None]
        if missing:
            raise ValueError(f"{path}: header has no column(s) {missing}; it has {names} "
                             f"(delimiter {delimiter!r})")
        self._layout = (delimiter, len(names), found[cols.label],
                        [found[c] for c in cols.categorical], [found[c] for c in cols.numeric])
        self.stats.add_header(counts)
        return 1

    # Rows ------------------------------------------------------------------

    def _label(self, value: bytes) -> float:
        if self.label_threshold is None:
            if value == b"1":
                return 1.0
            if value == b"0":
                return 0.0
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if self.label_threshold is not None:
            if not math.isfinite(number):
                raise BadLine(f"label column {self.columns.label!r} = {show(value)} "
                              "is not a finite number")
            return 1.0 if number >= self.label_threshold else 0.0
        if number in (0.0, 1.0):
            return number
        raise BadLine(f"label column {self.columns.label!r} = {show(value)} is not 0 or 1 "
                      "(pass label_threshold= to binarise other values)")

    def _parse(self, raw: bytes):
        delimiter, num_fields, label_pos, cat_pos, num_pos = self._layout
        line = raw.rstrip(b"\r")
        if b'"' in line:
            fields = [f.encode("utf-8") for f in
                      next(csv.reader([line.decode("utf-8")], delimiter=delimiter))]
        else:
            fields = line.split(delimiter.encode())
        if len(fields) != num_fields:
            if len(fields) == 1 and not fields[0]:
                raise BadLine("empty line")
            raise BadLine(f"expected {num_fields} {delimiter!r}-separated fields "
                          f"(as in the header), found {len(fields)}")
        label = self._label(fields[label_pos])
        try:
            numbers = [float(fields[i]) if fields[i] else 0.0 for i in num_pos]
            ok = all(map(math.isfinite, numbers))
        except ValueError:
            ok = False
        if not ok:
            for name, i in zip(self.columns.numeric, num_pos):
                value = fields[i]
                try:
                    good = not value or math.isfinite(float(value))
                except ValueError:
                    good = False
                if not good:
                    raise BadLine(f"numeric column {name!r} = {show(value)} "
                                  "is not a finite number")
        # One flat tuple of atoms per row: the garbage collector stops
        # tracking those, where lists would be scanned again and again.
        return (label, *numbers, *[fields[i] for i in cat_pos])

    def _make_batch(self, rows):
        n, d, c = len(rows), len(self.columns.numeric), len(self.columns.categorical)
        columns = list(zip(*rows))
        label = np.array(columns[0], np.float32)
        dense = np.array(columns[1:1 + d], np.float64).reshape(d, n).T
        if self.numeric_transform == "log1p":
            dense = np.log1p(np.maximum(dense, 0.0))
        cats = np.empty((c, n), object)
        for j in range(c):
            cats[j] = columns[1 + d + j]
        return ({"dense": np.ascontiguousarray(dense, np.float32),
                 "categorical": np.ascontiguousarray(cats.T)}, label)

    def _generator_signature(self):
        features, label = self.spec.element_spec()
        features["categorical"] = tf.TensorSpec([None, self.spec.num_categorical], tf.string)
        return features, label

    def _finish_tf(self, features, label):
        features = dict(features)
        features["categorical"] = hash_strings_tf(features["categorical"], self._salt)
        return features, label

    def _finish_np(self, batch):
        features, label = batch
        features = dict(features)
        features["categorical"] = hash_strings(features["categorical"], self._salt)
        return features, label
