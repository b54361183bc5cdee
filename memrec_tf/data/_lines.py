"""Base of the file readers: stream lines, validate them, batch the rows.

Files are read in binary blocks of whole lines. A reader may parse a whole
block at once with numpy (`_parse_block`, the fast path); when it cannot, or
when the block holds any bad line, the block is parsed again line by line
(`_parse`), which decides what a line means and reports each bad one with
its number. Both paths give the same rows. This base also numbers lines,
catches invalid UTF-8, applies the `on_error` policy, keeps `ReadStats`
exact, re-cuts rows into batches of exactly `batch_size` and wraps the
Python generator in `tf.data`. A generator is used rather than
`TextLineDataset` + `py_function` so that every bad line can be reported
with its number, and no file is ever held whole in memory.

Reading is linear in the input, however long its lines. A line longer than
`max_line_bytes` (default `MAX_LINE_BYTES`, 16 MiB) is rejected like any
other bad line; its bytes are dropped as they stream, so such a line costs
no more memory than the limit.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from memrec_tf.data import paths as paths_lib
from memrec_tf.data import stats as stats_lib
from memrec_tf.features import FeatureSpec

Batch = Tuple[dict, np.ndarray]

BLOCK_BYTES = 1 << 20
# Longest accepted line in bytes, not counting its b"\n": far above any
# real click log line (Criteo's are under 1 KiB), low enough that a file
# without newlines cannot exhaust memory.
MAX_LINE_BYTES = 16 << 20


class BadLine(Exception):
    """Raised by a line parser; `reason` says what is wrong."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def utf8_problem(raw: bytes) -> Optional[str]:
    """None if `raw` is valid UTF-8, else a description of the first bad byte."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"invalid UTF-8: byte 0x{raw[err.start]:02x} at byte offset {err.start}"
    return None


def show(value: bytes, limit: int = 40) -> str:
    """A field for an error message: decoded leniently and shortened."""
    text = value.decode("utf-8", "backslashreplace")
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


class LongLine(NamedTuple):
    """A line over the limit, yielded by `iter_line_blocks` in its place."""

    size: int  # bytes, not counting b"\n"

    def reason(self, max_line_bytes: int) -> str:
        """Why the line is rejected, for `Reject` and `MalformedLineError`."""
        return (f"line longer than {max_line_bytes} bytes ({self.size} bytes; "
                "see max_line_bytes)")


def iter_line_blocks(fh, block_bytes: int = BLOCK_BYTES, max_line_bytes: int = MAX_LINE_BYTES
                     ) -> Iterator[Tuple[Union[bytes, LongLine], int]]:
    """Yields `(block, n_lines)`: whole lines joined by b"\\n", no final b"\\n".

    A last line without b"\\n" counts as a line; a final b"\\n" does not
    start one. A line of more than `max_line_bytes` bytes (not counting its
    b"\\n") comes as `(LongLine(size), 1)`, in order; its bytes are dropped
    as they are read, so at most about `max_line_bytes + block_bytes` bytes
    are held.

    The work is linear in the input: each read is searched for b"\\n" once,
    and the pieces of a line that spans reads are joined once, when it ends.
    Reads are of at most `max_line_bytes + 1` bytes, so a line that ends in
    the read it starts in is within the limit; only a line carried over
    from earlier reads needs its length checked.

    Args:
      fh: A binary file object (`read(size)`).
      block_bytes: Bytes per read.
      max_line_bytes: The longest line kept.
    """
    if block_bytes < 1 or max_line_bytes < 1:
        raise ValueError(f"block_bytes and max_line_bytes must be >= 1, got {block_bytes} "
                         f"and {max_line_bytes}")
    read_size = min(block_bytes, max_line_bytes + 1)
    pieces: List[bytes] = []  # the unfinished line, while within the limit
    size = 0  # the unfinished line's length so far, also while it is skipped
    while True:
        data = fh.read(read_size)
        if not data:
            break
        cut = data.rfind(b"\n")
        if cut < 0:  # the unfinished line goes on
            size += len(data)
            if size <= max_line_bytes:
                pieces.append(data)
            else:
                pieces = []
            continue
        start = 0
        if size:  # the unfinished line ends in this read
            end = data.find(b"\n")
            if size + end > max_line_bytes:
                yield LongLine(size + end), 1
                pieces, start = [], end + 1
        block = None
        if start <= cut:
            if pieces:
                pieces.append(memoryview(data)[:cut])
                block = b"".join(pieces)
            else:
                block = data[start:cut]
        rest = data[cut + 1:]
        pieces, size = ([rest] if rest else []), len(rest)
        if block is not None:
            yield block, block.count(b"\n") + 1
    if size > max_line_bytes:
        yield LongLine(size), 1
    elif pieces:
        yield b"".join(pieces), 1


def concat_batches(batches: List[Batch]) -> Batch:
    """Concatenates batches along the row axis."""
    if len(batches) == 1:
        return batches[0]
    features = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    return features, np.concatenate([b[1] for b in batches])


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of a batch."""
    features, label = batch
    return {k: v[start:stop] for k, v in features.items()}, label[start:stop]


class _Rebatcher:
    """Re-cuts batches of any size into batches of exactly `size` rows."""

    def __init__(self, size: int):
        self.size = size
        self.pending: List[Batch] = []
        self.count = 0

    def add(self, batch: Batch) -> Iterator[Batch]:
        n = len(batch[1])
        if not n:
            return
        self.pending.append(batch)
        self.count += n
        if self.count < self.size:
            return
        merged = concat_batches(self.pending)
        start = 0
        while self.count - start >= self.size:
            yield slice_batch(merged, start, start + self.size)
            start += self.size
        self.pending = [slice_batch(merged, start, self.count)] if start < self.count else []
        self.count -= start

    def flush(self) -> Iterator[Batch]:
        if self.count:
            yield concat_batches(self.pending)
        self.pending, self.count = [], 0


class LineReader:
    """Streams `(features, label)` batches from line-oriented files.

    Subclasses set `self.spec` and implement `_parse` and `_make_batch`
    (and optionally `_parse_block`); CSV-like readers also override
    `_start_file` to consume a header.

    Attributes:
      paths: The input files, read in order; batches run across file ends.
      batch_size: Rows per batch (only the last batch of a pass may be
        smaller).
      on_error: "skip" (count, log and drop bad lines) or "raise" (stop with
        `MalformedLineError` naming file, line and problem).
      max_line_bytes: Longest line accepted, in bytes without b"\\n"
        (default `MAX_LINE_BYTES`, 16 MiB); a longer one is a bad line
        ("line longer than N bytes"), skipped without being held in memory.
      stats: `ReadStats` of the current / last pass.
      spec: The `FeatureSpec` of the batches.
    """

    spec: FeatureSpec
    block_bytes = BLOCK_BYTES

    def __init__(self, paths, *, batch_size: int = 4096, on_error: str = "skip",
                 max_reported: int = 20, max_line_bytes: int = MAX_LINE_BYTES):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(max_line_bytes) < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self.max_line_bytes = int(max_line_bytes)
        self.paths = paths_lib.as_path_list(paths)
        self.batch_size = int(batch_size)
        self.on_error = stats_lib.check_on_error(on_error)
        self.stats = stats_lib.ReadStats(max_examples=max_reported)

    # Subclass hooks --------------------------------------------------------

    def _start_file(self, path: str, fh, counts: stats_lib.FileCounts) -> int:
        """Consumes header lines; returns how many lines it read."""
        del path, fh, counts
        return 0

    def _parse(self, raw: bytes):
        """Parses one line (without b"\\n") into a row; raises BadLine."""
        raise NotImplementedError

    def _make_batch(self, rows: List) -> Batch:
        """Stacks `_parse` rows into a raw batch."""
        raise NotImplementedError

    def _parse_block(self, block: bytes, n_lines: int) -> Optional[Batch]:
        """Parses a block of `n_lines` good lines at once, or returns None.

        Returning None (any doubt at all) sends the block to the line by line
        path, so a fast path only needs to be right on the inputs it accepts.
        """
        del block, n_lines
        return None

    def _generator_signature(self):
        """Element spec of the raw batches (before `_finish_tf`)."""
        return self.spec.element_spec()

    def _finish_tf(self, features, label):
        """Graph-side step applied to each raw batch in `dataset()`."""
        return features, label

    def _finish_np(self, batch: Batch) -> Batch:
        """Numpy-side equivalent of `_finish_tf` for `iter_batches()`."""
        return batch

    # Streaming -------------------------------------------------------------

    def _reject(self, path: str, line: int, reason: str, counts):
        reject = stats_lib.Reject(path, line, reason)
        raising = self.on_error == "raise"
        self.stats.add_reject(counts, reject, log=not raising)
        if raising:
            # Mostly called from an except block: the BadLine behind it adds nothing.
            raise stats_lib.MalformedLineError(path, line, reason) from None

    @contextlib.contextmanager
    def _open(self, path: str):
        """Opens `path` for a pass; an error that stops it goes to `stats.error`."""
        try:
            with paths_lib.open_binary(path) as fh:
                yield fh
        except (stats_lib.MalformedLineError, stats_lib.CorruptFileError) as err:
            # A copy: the error's traceback would keep the generator's frames.
            self.stats.error = copy.copy(err)
            raise

    def _parse_lines(self, path: str, block: bytes, first_line: int, counts) -> Optional[Batch]:
        """The line by line path over one block."""
        parse = self._parse
        rows = []
        for line, raw in enumerate(block.split(b"\n"), first_line):
            try:
                # A bytes method in C: only non-ASCII lines pay for decoding.
                if not raw.isascii():
                    problem = utf8_problem(raw)
                    if problem:
                        raise BadLine(problem)
                rows.append(parse(raw))
            except BadLine as bad:
                if self.on_error == "raise":
                    # Count the good rows before this line, as the stats promise.
                    self.stats.add_rows(counts, len(rows))
                self._reject(path, line, bad.reason, counts)
        return self._make_batch(rows) if rows else None

    def _raw_batches(self) -> Iterator[Batch]:
        strip = self.spec.batch_features
        for features, label in self._parsed_batches():
            yield strip(features), label

    def _parsed_batches(self) -> Iterator[Batch]:
        stats = self.stats
        stats.reset()
        rebatcher = _Rebatcher(self.batch_size)
        for path in self.paths:
            counts = stats.file(path)
            with self._open(path) as fh:
                line = self._start_file(path, fh, counts)
                for block, n_lines in iter_line_blocks(fh, self.block_bytes,
                                                       self.max_line_bytes):
                    if isinstance(block, LongLine):
                        self._reject(path, line + 1, block.reason(self.max_line_bytes), counts)
                        batch = None
                    else:
                        batch = self._parse_block(block, n_lines)
                        if batch is None:
                            batch = self._parse_lines(path, block, line + 1, counts)
                    line += n_lines
                    if batch is not None:
                        stats.add_rows(counts, len(batch[1]))
                        yield from rebatcher.add(batch)
        yield from rebatcher.flush()
        stats.finish_pass()

    def iter_batches(self) -> Iterator[Batch]:
        """Yields numpy `(features, label)` batches; one call is one pass.

        Yields:
          `(features, label)`: features a dict of numpy arrays as in
          `spec.element_spec()`, label float32 [B].

        Raises:
          MalformedLineError: On a bad line when `on_error="raise"`.
          CorruptFileError: On a truncated or corrupt `.gz` file, whatever
            `on_error` says.
        """
        for batch in self._raw_batches():
            yield self._finish_np(batch)

    def dataset(self, prefetch: bool = True) -> tf.data.Dataset:
        """A `tf.data.Dataset` of `(features, label)` batches.

        Each iteration (epoch) re-reads the files and resets `stats`. An error
        that stops a pass (`MalformedLineError` in "raise" mode, or
        `CorruptFileError`) surfaces as a `tf.errors.OpError` whose message
        includes its text (file, line number or position, problem); the
        error itself is kept in `stats.error`, to be raised in its place.
        Let that error and its traceback go (or call `gc.collect()`) before
        the program exits: the traceback holds the iterator, whose prefetch
        thread may still be in the Python generator, and TensorFlow cannot
        free such an iterator at interpreter exit (the process hangs).
        `memrec_tf.app.sources.reading` does this and raises `stats.error`.

        Args:
          prefetch: Append `.prefetch(tf.data.AUTOTUNE)`.

        Returns:
          The dataset.
        """
        ds = tf.data.Dataset.from_generator(
            self._raw_batches, output_signature=self._generator_signature())
        if type(self)._finish_tf is not LineReader._finish_tf:
            ds = ds.map(self._finish_tf, num_parallel_calls=tf.data.AUTOTUNE)
        if prefetch:
            ds = ds.prefetch(tf.data.AUTOTUNE)
        return ds

    def read_all(self) -> Batch:
        """Reads one whole pass into memory (for small files).

        Returns:
          `(features, label)` with all rows concatenated.
        """
        batches = list(self.iter_batches())
        if batches:
            return concat_batches(batches)
        features, _ = self.spec.element_spec()
        return ({k: np.zeros([0, *s.shape[1:]], s.dtype.as_numpy_dtype)
                 for k, s in features.items()}, np.zeros([0], np.float32))

    def count_lines(self) -> int:
        """Lines in the input files (e.g. for a progress bar's total)."""
        return paths_lib.count_lines(self.paths)
