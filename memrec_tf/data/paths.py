"""Where the shared real data sets live, and opening (possibly gzipped) files."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Union

from memrec_tf.data import stats as stats_lib

PathLike = Union[str, os.PathLike]

DATA_DIR_ENV = "MEMREC_DATA_DIR"


def data_dir(override: Optional[PathLike] = None) -> Path:
    """The folder holding `criteo_sample/`, `frappe/` and `movielens100k/`.

    Looked up in this order: `override`, the `MEMREC_DATA_DIR` environment
    variable, then `../shared/data` beside a source checkout of the project.

    Args:
      override: An explicit folder.

    Returns:
      The folder's path (it may not exist; callers check).
    """
    if override is not None:
        return Path(override)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    # memrec_tf/data/paths.py -> parents[2] is the repository root.
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def require_file(path: Path) -> Path:
    """Returns `path`, or raises FileNotFoundError saying how to point at it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} not found; pass data_dir= or set {DATA_DIR_ENV} to the folder "
            "holding criteo_sample/, frappe/ and movielens100k/")
    return path


def as_path_list(paths: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """One path or a sequence of paths -> list of str; rejects an empty list."""
    if isinstance(paths, (str, os.PathLike)):
        out = [os.fspath(paths)]
    else:
        out = [os.fspath(p) for p in paths]
    if not out:
        raise ValueError("no input files given")
    return out


# What gzip raises on a damaged stream: cut short (EOFError), bad deflate
# data (zlib.error), bad header, CRC or length (BadGzipFile).
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class _GzipLines:
    """A `.gz` file read in binary whose damage raises `CorruptFileError`.

    Everything that decompresses before the damage is handed out first; the
    read after that raises. The error says how far reading got: the bytes
    and lines handed out, which this counts. Only what the readers use:
    `read`, `readline`, `close` and the context manager.
    """

    # Bytes asked of the decompressor at a time: `read` gathers what one
    # read would otherwise lose to an exception.
    _CHUNK = 1 << 18

    def __init__(self, path: str):
        self.path = path
        self.bytes_read = 0
        self.lines_read = 0
        self._damage: Optional[Exception] = None  # held back until the data before it is read
        self._file = gzip.open(path, "rb")

    def read(self, size: int = -1) -> bytes:
        """`size` bytes (all with size < 0); fewer only at the end or before damage."""
        self._check()
        chunks, got = [], 0
        while size < 0 or got < size:
            want = self._CHUNK if size < 0 else min(size - got, self._CHUNK)
            try:
                chunk = self._file.read1(want)
            except _GZIP_ERRORS as err:
                self._damage = err
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        if not data:
            self._check()
        return self._counted(data)

    def readline(self, size: int = -1) -> bytes:
        self._check()
        try:
            data = self._file.readline(size)
        except _GZIP_ERRORS as err:
            self._damage = err
            self._check()
        return self._counted(data)

    def _counted(self, data: bytes) -> bytes:
        self.bytes_read += len(data)
        self.lines_read += data.count(b"\n")
        return data

    def _check(self):
        err = self._damage
        if err is not None:
            raise stats_lib.CorruptFileError(self.path, self.lines_read, self.bytes_read,
                                             str(err) or type(err).__name__) from err

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_binary(path: str):
    """Opens a file for binary line reading; `.gz` files are decompressed.

    Reading a `.gz` file whose stream is truncated or corrupt raises
    `CorruptFileError` (a ValueError) naming the file and how far it got.
    """
    if path.endswith(".gz"):
        return _GzipLines(path)
    return open(path, "rb", buffering=1 << 20)


def count_lines(paths: Union[PathLike, Sequence[PathLike]]) -> int:
    """Counts lines the way the readers do (a last line without b"\\n" counts).

    Cheap enough for a progress bar's total: it reads in 1 MiB blocks.

    Args:
      paths: One file or several.

    Returns:
      The total number of lines.

    Raises:
      CorruptFileError: If a `.gz` file is truncated or corrupt.
    """
    total = 0
    for path in as_path_list(paths):
        last = b"\n"
        with open_binary(path) as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                total += block.count(b"\n")
                last = block[-1:]
        if last != b"\n":
            total += 1
    return total
