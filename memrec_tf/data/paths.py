"""Where the shared real data sets live, and opening (possibly gzipped) files."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

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


def open_binary(path: str):
    """Opens a file for binary line reading; `.gz` files are decompressed."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def count_lines(paths: Union[PathLike, Sequence[PathLike]]) -> int:
    """Counts lines the way the readers do (a last line without b"\\n" counts).

    Cheap enough for a progress bar's total: it reads in 1 MiB blocks.

    Args:
      paths: One file or several.

    Returns:
      The total number of lines.
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
