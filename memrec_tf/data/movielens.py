"""MovieLens-100K (RecBole's atomic files) as a click-style data set.

Reads `ml-100k.inter` (user_id, item_id, rating, timestamp), joins the
user side features of `ml-100k.user` (age, gender, occupation, zip_code)
and the item features of `ml-100k.item` (release_year, first genre of
`class`), and labels a rating >= 4 as a click.

Features: 8 categorical columns `MOVIELENS_COLUMNS`, no dense ones
(features["dense"] is [N, 0]). Raw ids are `hashing.hash_strings` of the
string values salted with the column name; a user or item missing from its
side file gets empty side features (`EMPTY_ID`). The dense vocabulary index
is fitted on the train split with one OOV slot per column (see
`vocab.Vocabulary`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from memrec_tf.data import arrays as arrays_lib
from memrec_tf.data import paths as paths_lib
from memrec_tf.data.hashing import hash_strings
from memrec_tf.features import FeatureSpec

MOVIELENS_COLUMNS = ("user_id", "item_id", "age", "gender", "occupation", "zip_code",
                     "release_year", "genre")
_USER_COLUMNS = ("age", "gender", "occupation", "zip_code")


def read_atomic_table(path: Path, required: Sequence[str]) -> Dict[str, List[str]]:
    """Reads a tab separated file with a typed header (`name:type`).

    Args:
      path: The file.
      required: Column base names that must be present.

    Returns:
      base column name -> list of string values, one per data line.

    Raises:
      ValueError: On a missing column, a line with the wrong field count or
        bytes that are not UTF-8, naming the file and line.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not valid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty: expected a header line")
    header = [h.split(":", 1)[0].strip() for h in lines[0].rstrip("\r").split("\t")]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: header has no column(s) {missing}; it has {header}")
    body = [line.rstrip("\r") for line in lines[1:]]
    width = len(header)
    for number, line in enumerate(body, 2):
        if line.count("\t") != width - 1:
            raise ValueError(f"{path}: line {number} has {line.count(chr(9)) + 1} fields, "
                             f"the header {width}")
    # One flat list of strings: per-row lists would be many objects for the
    # garbage collector to scan.
    flat = "\t".join(body).split("\t") if body else []
    return {name: flat[i::width] for i, name in enumerate(header)}


def _raw_movielens(root: Path, positive_threshold: float) -> Tuple[dict, np.ndarray]:
    inter = read_atomic_table(paths_lib.require_file(root / "ml-100k.inter"),
                              ("user_id", "item_id", "rating"))
    users = read_atomic_table(paths_lib.require_file(root / "ml-100k.user"),
                              ("user_id",) + _USER_COLUMNS)
    items = read_atomic_table(paths_lib.require_file(root / "ml-100k.item"),
                              ("item_id", "release_year", "class"))
    user_side = {u: tuple(users[c][i] for c in _USER_COLUMNS)
                 for i, u in enumerate(users["user_id"])}
    item_side = {it: (items["release_year"][i], (items["class"][i].split() or [""])[0])
                 for i, it in enumerate(items["item_id"])}
    no_user, no_item = ("",) * len(_USER_COLUMNS), ("", "")
    user_rows = [user_side.get(u, no_user) for u in inter["user_id"]]
    item_rows = [item_side.get(it, no_item) for it in inter["item_id"]]
    values = np.empty((len(user_rows), len(MOVIELENS_COLUMNS)), object)
    values[:, 0] = inter["user_id"]
    values[:, 1] = inter["item_id"]
    side = len(_USER_COLUMNS)
    values[:, 2:2 + side] = np.array(user_rows, object).reshape(-1, side)
    values[:, 2 + side:] = np.array(item_rows, object).reshape(-1, 2)
    try:
        rating = np.array(inter["rating"], np.float64)
    except ValueError as err:
        raise ValueError(f"{root / 'ml-100k.inter'}: a rating is not a number ({err})") from None
    features = {"dense": np.zeros([len(values), 0], np.float32),
                "categorical": hash_strings(values, MOVIELENS_COLUMNS)}
    return features, (rating >= positive_threshold).astype(np.float32)


def load_movielens100k(data_dir=None, *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                       seed: int = 0, min_count: int = 1,
                       positive_threshold: float = 4.0) -> arrays_lib.ArrayData:
    """Loads MovieLens-100K (100,000 ratings) into numpy arrays.

    Args:
      data_dir: Folder holding `movielens100k/`; default `paths.data_dir()`.
      fractions: Shares of rows in "train", "dev", "test" (random split).
      seed: Seed of the split.
      min_count: See `Vocabulary.fit`.
      positive_threshold: label = rating >= this.

    Returns:
      `ArrayData` with splits "train", "dev", "test".

    Raises:
      FileNotFoundError: If a file is missing.
      ValueError: On a malformed file or bad fractions.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must have 3 entries (train, dev, test), got {fractions}")
    root = paths_lib.data_dir(data_dir) / "movielens100k"
    batch = _raw_movielens(root, positive_threshold)
    raw = arrays_lib.split_rows(batch, dict(zip(("train", "dev", "test"), fractions)), seed)
    spec = FeatureSpec(dense_names=(), categorical_names=MOVIELENS_COLUMNS,
                       label_name="rating>=%g" % positive_threshold, id_encoding="hash")
    return arrays_lib.ArrayData.from_raw(spec, raw, min_count=min_count)


def movielens100k_dataset(split: str = "train", *, batch_size: int = 1024, ids: str = "index",
                          shuffle: bool = False, data_dir=None,
                          seed: int = 0) -> Tuple[tf.data.Dataset, FeatureSpec]:
    """A `(features, label)` dataset of one MovieLens-100K split.

    Args:
      split: "train", "dev" or "test".
      batch_size: Rows per batch.
      ids: "index" (dense vocabulary index) or "raw" (hashed ids).
      shuffle: Shuffle rows each epoch.
      data_dir: Folder holding `movielens100k/`.
      seed: Seed of the split and the shuffle.

    Returns:
      `(dataset, spec)`.
    """
    data = load_movielens100k(data_dir, seed=seed)
    return data.dataset(split, batch_size, ids=ids, shuffle=shuffle, seed=seed), data.spec
