"""libFM reader: labels, field map, values, malformed lines, Frappe."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf.data import (FRAPPE_CARDINALITIES, LibFMReader, MalformedLineError, count_lines,
                            frappe_reader, load_frappe)

from conftest import shared_data_dir


def write(path: Path, text: bytes) -> Path:
    path.write_bytes(text)
    return path


def test_parses_labels_and_indices(tmp_path):
    path = write(tmp_path / "a.libfm",
                 b"-1 3:1 10:1 12:1\n1 0:1 7:1 13:1 \r\n0 2:1 9:1 11:1\n+1 1:1.0 8:1 14:1")
    reader = LibFMReader(path)
    assert reader.num_fields == 3  # taken from the first line
    features, label = reader.read_all()
    np.testing.assert_array_equal(label, [0, 1, 0, 1])
    np.testing.assert_array_equal(features["categorical"],
                                  [[3, 10, 12], [0, 7, 13], [2, 9, 11], [1, 8, 14]])
    assert "dense" not in features  # no dense features, no empty block
    assert reader.stats.rows_read == 4 and reader.stats.rows_rejected == 0


def test_with_values_keeps_weights(tmp_path):
    path = write(tmp_path / "v.libfm", b"1 0:0.5 4:2\n-1 1:1 5:-3.25\n")
    reader = LibFMReader(path, num_fields=2, with_values=True)
    features, label = reader.read_all()
    np.testing.assert_array_equal(label, [1, 0])
    np.testing.assert_array_equal(features["categorical"], [[0, 4], [1, 5]])
    np.testing.assert_array_equal(features["weights"], [[0.5, 2.0], [1.0, -3.25]])
    assert reader.spec.extra_features == ("weights",)
    element = next(iter(reader.dataset()))
    assert element[0]["weights"].dtype == tf.float32


def test_fast_path_matches_line_by_line(tmp_path):
    rng = np.random.default_rng(0)
    cards = [5, 50, 3]
    starts = np.cumsum([0] + cards[:-1])
    lines = []
    for _ in range(2000):
        label = ["-1", "1", "0", "+1"][int(rng.integers(0, 4))]
        idx = [int(s + rng.integers(0, c)) for s, c in zip(starts, cards)]
        lines.append(label + " " + " ".join(f"{i}:1" for i in idx))
    path = write(tmp_path / "r.libfm", ("\r\n".join(lines) + " \r\n").encode())
    fast = LibFMReader(path, num_fields=3, cardinalities=cards)
    fast.block_bytes = 4096
    slow = LibFMReader(path, num_fields=3, cardinalities=cards)
    slow._parse_block = lambda block, n: None
    (f1, l1), (f2, l2) = fast.read_all(), slow.read_all()
    assert len(l1) == 2000
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(f1["categorical"], f2["categorical"])


def test_malformed_lines_are_counted(tmp_path):
    lines = [b"1 0:1 5:1",            # 1 good
             b"1 0:1",                # 2 one pair short
             b"2 0:1 5:1",            # 3 bad label
             b"0 0:1 x:1",            # 4 non-numeric index
             b"-1 1:1 6:0.5",         # 5 value not 1
             b"1 1:1 \xff6:1",        # 6 invalid UTF-8
             b"",                     # 7 empty
             b"1 0:1 2:1",            # 8 index outside field 2's range [5, 10)
             b"1 0:1 5",              # 9 pair without ':'
             b"-1 4:1 9:1"]           # 10 good
    path = write(tmp_path / "bad.libfm", b"\n".join(lines) + b"\n")
    reader = LibFMReader(path, num_fields=2, cardinalities=[5, 5])
    features, label = reader.read_all()
    stats = reader.stats
    assert stats.rows_read + stats.rows_rejected == count_lines(path) == 10
    assert stats.rows_read == 2
    np.testing.assert_array_equal(features["categorical"], [[0, 5], [4, 9]])
    assert [r.line for r in stats.rejects] == [2, 3, 4, 5, 6, 7, 8, 9]
    reasons = [r.reason for r in stats.rejects]
    assert "expected 2" in reasons[0] and "found 1" in reasons[0]
    assert "label '2'" in reasons[1]
    assert "index 'x'" in reasons[2]
    assert "'0.5' is not 1" in reasons[3] and "with_values" in reasons[3]
    assert "UTF-8" in reasons[4]
    assert reasons[5] == "empty line"
    assert "outside field 2's range [5, 10)" in reasons[6]
    assert "not idx:val" in reasons[7]

    with pytest.raises(MalformedLineError, match=r"bad\.libfm at line 2: expected 2"):
        list(LibFMReader(path, num_fields=2, on_error="raise").iter_batches())


def test_field_count_checks(tmp_path):
    path = write(tmp_path / "empty.libfm", b"\n\n")
    with pytest.raises(ValueError, match="num_fields"):
        LibFMReader(path)
    with pytest.raises(ValueError, match="field names"):
        LibFMReader(path, num_fields=2, field_names=["a"])


@pytest.mark.data
def test_real_frappe():
    root = shared_data_dir() / "frappe"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set MEMREC_DATA_DIR)")
    reader = frappe_reader(root / "frappe.test.libfm", batch_size=8192)
    features, label = reader.read_all()
    assert (reader.stats.rows_read, reader.stats.rows_rejected) == (28860, 0)
    assert set(np.unique(label)) == {0.0, 1.0}
    np.testing.assert_array_equal(features["categorical"][0],
                                  [204, 4798, 5041, 5046, 5053, 5055, 5058, 5060, 5073, 5183])
    assert label[0] == 0.0 and label[1] == 1.0

    data = load_frappe(shared_data_dir(), dev_fraction=0.1)
    rows = {k: data.num_rows(k) for k in data.splits}
    assert rows["train"] + rows["dev"] == 57722 and rows["test"] == 28860
    assert data.spec.vocabulary_size == sum(FRAPPE_CARDINALITIES) == 5382
    offsets = data.spec.column_offsets()
    for split in data.splits.values():
        index = split["index"]
        np.testing.assert_array_equal(index, split["categorical"])
        assert (index >= offsets).all() and (index < offsets + FRAPPE_CARDINALITIES).all()
    assert abs(data.splits["test"]["label"].mean() - 1 / 3) < 0.01
