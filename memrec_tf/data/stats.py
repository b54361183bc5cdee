"""Counting what a file reader kept and what it rejected, line by line."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Dict, List, NamedTuple, Optional

logger = logging.getLogger("memrec_tf.data")

ON_ERROR_MODES = ("skip", "raise")


class Reject(NamedTuple):
    """One rejected line: where it is and what is wrong with it."""

    path: str
    line: int  # 1-based
    reason: str

    def __str__(self):
        return f"{self.path}:{self.line}: {self.reason}"


class MalformedLineError(ValueError):
    """A line that does not parse, raised when `on_error="raise"`.

    Attributes:
      path: The file.
      line: 1-based line number.
      reason: What is wrong with the line.
    """

    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"malformed line in {path} at line {line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason

    def __reduce__(self):
        # Rebuilt from the fields, as `__init__` takes them (pickle, copy).
        return type(self), (self.path, self.line, self.reason)


class CorruptFileError(ValueError):
    """A `.gz` file whose compressed stream is truncated or corrupt.

    Raised whatever `on_error` says: the rest of the file cannot be read.

    Attributes:
      path: The file.
      lines: Complete lines decompressed before the damage.
      bytes_read: Bytes of data decompressed before the damage.
      reason: What the decompressor reported.
    """

    def __init__(self, path: str, lines: int, bytes_read: int, reason: str):
        super().__init__(f"{path}: the gzip stream is truncated or corrupt after {lines} lines "
                         f"({bytes_read} bytes of data): {reason}")
        self.path = path
        self.lines = lines
        self.bytes_read = bytes_read
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.lines, self.bytes_read, self.reason)


@dataclasses.dataclass
class FileCounts:
    """Per-file counts of one pass."""

    rows_read: int = 0
    rows_rejected: int = 0
    header_lines: int = 0

    @property
    def lines(self) -> int:
        """Lines seen in this file: header + kept + rejected."""
        return self.header_lines + self.rows_read + self.rows_rejected


class ReadStats:
    """Counts of one pass over a reader's files, updated while it streams.

    A pass starts when `iter_batches()` (or one epoch of `dataset()`) starts
    and the counters reset then; `last_pass` keeps a frozen copy of the last
    pass that ran to the end. For every file,
    `header_lines + rows_read + rows_rejected` equals its number of lines
    (lines end at b"\\n"; a last line without one counts).

    Attributes:
      rows_read: Lines parsed into rows this pass.
      rows_rejected: Lines rejected this pass.
      header_lines: Header lines consumed this pass (CSV only).
      rejects: The first `max_examples` rejected lines, as `Reject`s.
      by_file: `FileCounts` per path, in reading order.
      passes_completed: Passes that reached the end of the last file.
      complete: Whether the current pass reached the end.
      last_pass: A `ReadStats` copy of the last completed pass, or None.
      error: The `MalformedLineError` or `CorruptFileError` that stopped the
        current pass, or None. A copy without the traceback: a pass run by
        `tf.data` reaches its caller as a `tf.errors.OpError`, and this is
        the error to raise in its place.
    """

    def __init__(self, max_examples: int = 20):
        self.max_examples = int(max_examples)
        self.passes_completed = 0
        self.last_pass = None
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        """Zeroes the current pass's counters."""
        self.rows_read = 0
        self.rows_rejected = 0
        self.header_lines = 0
        self.rejects: List[Reject] = []
        self.by_file: Dict[str, FileCounts] = {}
        self.complete = False
        self.error: Optional[ValueError] = None

    @property
    def lines_seen(self) -> int:
        """All lines seen this pass: header + kept + rejected."""
        return self.header_lines + self.rows_read + self.rows_rejected

    def file(self, path: str) -> FileCounts:
        """The counts of `path` in this pass (created on first use)."""
        counts = self.by_file.get(path)
        if counts is None:
            counts = self.by_file[path] = FileCounts()
        return counts

    def add_rows(self, counts: FileCounts, n: int):
        """Records `n` kept rows of one file."""
        counts.rows_read += n
        self.rows_read += n

    def add_header(self, counts: FileCounts, n: int = 1):
        """Records `n` header lines of one file."""
        counts.header_lines += n
        self.header_lines += n

    def add_reject(self, counts: FileCounts, reject: Reject, log: bool = True):
        """Records one rejected line, logging the first `max_examples`."""
        counts.rows_rejected += 1
        self.rows_rejected += 1
        if len(self.rejects) < self.max_examples:
            self.rejects.append(reject)
            if log:
                logger.warning("skipping %s", reject)

    def finish_pass(self):
        """Marks the pass complete and freezes a copy in `last_pass`."""
        with self._lock:
            self.complete = True
            self.passes_completed += 1
            self.last_pass = self.snapshot()
        if self.rows_rejected:
            logger.warning("%s", self.summary())

    def snapshot(self) -> "ReadStats":
        """A copy of the current counters that later passes do not change."""
        copy = ReadStats(self.max_examples)
        copy.rows_read = self.rows_read
        copy.rows_rejected = self.rows_rejected
        copy.header_lines = self.header_lines
        copy.rejects = list(self.rejects)
        copy.by_file = {p: dataclasses.replace(c) for p, c in self.by_file.items()}
        copy.complete = self.complete
        copy.error = self.error
        copy.passes_completed = self.passes_completed
        return copy

    def summary(self) -> str:
        """One line: rows read, rows rejected and the first rejects."""
        text = (f"{self.rows_read} rows read, {self.rows_rejected} rejected "
                f"in {len(self.by_file)} file(s)")
        if self.rejects:
            shown = "; ".join(str(r) for r in self.rejects[:5])
            more = self.rows_rejected - min(len(self.rejects), 5)
            text += f"; first rejected: {shown}" + (f"; and {more} more" if more > 0 else "")
        return text

    def __repr__(self):
        return (f"ReadStats(rows_read={self.rows_read}, rows_rejected={self.rows_rejected}, "
                f"header_lines={self.header_lines}, complete={self.complete})")


def check_on_error(on_error: str) -> str:
    """Validates an `on_error` argument."""
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
    return on_error
