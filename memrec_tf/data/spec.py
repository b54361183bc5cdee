"""Feature layout shared by every reader: `FeatureSpec` and `ColumnSpec`."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a reader's batches hold.

    Every reader yields `(features, label)` with
    `features = {"dense": float32 [B, num_dense], "categorical": int64
    [B, num_categorical]}` (plus `"weights"` float32 [B, num_categorical]
    for a libFM reader built with `with_values=True`) and `label` float32
    [B] of 0/1.

    Attributes:
      dense_names: Names of the dense columns, in order.
      categorical_names: Names of the categorical columns, in order.
      cardinalities: Per categorical column, the number of distinct ids it
        can take (None where unknown); None when no column's is known.
      label_name: Name of the label column.
      id_encoding: What the categorical ids are: "hex" (Criteo hex strings
        parsed base 16), "hash" (FarmHash of the string, see
        `hashing.hash_strings`), "index" (dense indices in
        [0, vocabulary_size)), "raw" (integers taken as they are).
      vocabulary_size: Size V of the global dense index when the ids (or the
        arrays' "index" entry) are dense indices in [0, V); else None.
      extra_features: Names of optional feature tensors beyond "dense" and
        "categorical" (e.g. ("weights",)).
    """

    dense_names: Tuple[str, ...]
    categorical_names: Tuple[str, ...]
    cardinalities: Optional[Tuple[Optional[int], ...]] = None
    label_name: str = "label"
    id_encoding: str = "raw"
    vocabulary_size: Optional[int] = None
    extra_features: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "dense_names", tuple(self.dense_names))
        object.__setattr__(self, "categorical_names", tuple(self.categorical_names))
        object.__setattr__(self, "extra_features", tuple(self.extra_features))
        if self.cardinalities is not None:
            cards = tuple(None if c is None else int(c) for c in self.cardinalities)
            if len(cards) != len(self.categorical_names):
                raise ValueError(
                    f"cardinalities has {len(cards)} entries but there are "
                    f"{len(self.categorical_names)} categorical columns")
            object.__setattr__(self, "cardinalities", cards)

    @property
    def num_dense(self) -> int:
        """Number of dense (float) features."""
        return len(self.dense_names)

    @property
    def num_categorical(self) -> int:
        """Number of categorical (int64 id) features."""
        return len(self.categorical_names)

    def column_offsets(self) -> np.ndarray:
        """Start of each categorical column's block in a shared [0, V) range.

        Returns:
          int64 array [num_categorical]: exclusive cumulative sum of the
          cardinalities, so `offsets[c] + id` is a global index when column
          c's ids lie in [0, cardinalities[c]).

        Raises:
          ValueError: If some cardinality is unknown.
        """
        if self.cardinalities is None or any(c is None for c in self.cardinalities):
            raise ValueError("column_offsets needs every cardinality; this spec has "
                             f"cardinalities={self.cardinalities}")
        cards = np.asarray(self.cardinalities, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)

    def element_spec(self):
        """The `tf.data` element spec of the batches, `(features, label)`."""
        features = {
            "dense": tf.TensorSpec([None, self.num_dense], tf.float32),
            "categorical": tf.TensorSpec([None, self.num_categorical], tf.int64),
        }
        for name in self.extra_features:
            features[name] = tf.TensorSpec([None, self.num_categorical], tf.float32)
        return features, tf.TensorSpec([None], tf.float32)


_KEY_ALIASES = {
    "label": "label", "target": "label",
    "categorical": "categorical", "cat": "categorical", "sparse": "categorical",
    "numeric": "numeric", "num": "numeric", "dense": "numeric",
}


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """Which columns of a headed CSV/TSV file are the label and the features.

    Attributes:
      label: Name of the label column.
      categorical: Names of the categorical columns (strings, hashed).
      numeric: Names of the numeric columns (floats, empty -> 0).
    """

    label: str
    categorical: Tuple[str, ...] = ()
    numeric: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "numeric", tuple(self.numeric))
        if not self.label:
            raise ValueError("ColumnSpec needs a label column")
        names = [self.label, *self.categorical, *self.numeric]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"columns named more than once in the column spec: {dupes}")
        if not self.categorical and not self.numeric:
            raise ValueError("ColumnSpec needs at least one categorical or numeric column")

    @classmethod
    def parse(cls, text: str) -> "ColumnSpec":
        """Parses `"label=click,categorical=C1,C14,site_id,numeric=hour"`.

        Items are comma separated; an item `key=name` starts a group and the
        items after it without `=` extend that group. Keys: `label` (or
        `target`), `categorical` (`cat`, `sparse`), `numeric` (`num`,
        `dense`).

        Args:
          text: The column spec string.

        Returns:
          The ColumnSpec.

        Raises:
          ValueError: On an unknown key, a name before any key, or more than
            one label column.
        """
        groups = {"label": [], "categorical": [], "numeric": []}
        current = None
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if "=" in item:
                key, _, name = item.partition("=")
                key = key.strip().lower()
                if key not in _KEY_ALIASES:
                    raise ValueError(
                        f"unknown key {key!r} in column spec {text!r}; expected one of "
                        "label, categorical, numeric")
                current = _KEY_ALIASES[key]
                item = name.strip()
                if not item:
                    continue
            if current is None:
                raise ValueError(f"column {item!r} in column spec {text!r} comes before "
                                 "any 'label=', 'categorical=' or 'numeric='")
            groups[current].append(item)
        if len(groups["label"]) != 1:
            raise ValueError(f"column spec {text!r} must name exactly one label column, "
                             f"got {groups['label']}")
        return cls(label=groups["label"][0], categorical=tuple(groups["categorical"]),
                   numeric=tuple(groups["numeric"]))


def as_column_spec(columns) -> ColumnSpec:
    """Accepts a ColumnSpec, a spec string, or a dict with the same keys."""
    if isinstance(columns, ColumnSpec):
        return columns
    if isinstance(columns, str):
        return ColumnSpec.parse(columns)
    if isinstance(columns, dict):
        return ColumnSpec(label=columns["label"],
                          categorical=tuple(columns.get("categorical", ())),
                          numeric=tuple(columns.get("numeric", ())))
    raise TypeError(f"columns must be a ColumnSpec, str or dict, got {type(columns).__name__}")


def names(prefix: str, count: int) -> Sequence[str]:
    """`[prefix1, prefix2, ...]`, Criteo's column naming."""
    return [f"{prefix}{i + 1}" for i in range(count)]
