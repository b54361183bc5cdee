"""Which columns of a headed CSV/TSV file are the label and the features: `ColumnSpec`."""
from __future__ import annotations

import dataclasses
from typing import Tuple


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

