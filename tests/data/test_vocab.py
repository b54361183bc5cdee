"""Global vocabulary index, in-memory arrays and data paths."""
from pathlib import Path

import numpy as np
import pytest

from memrec_tf.data import (ArrayData, Vocabulary, count_lines, data_dir, frequency_order,
                            load_criteo_sample, load_frappe, load_movielens100k)
from memrec_tf.data.arrays import split_rows
from memrec_tf.features import FeatureSpec

from conftest import REPO_ROOT


def test_vocabulary_fit_orders_by_frequency_with_oov_slots():
    train = np.array([[7, -1], [7, 5], [3, 5], [7, 5], [9, 5]], np.int64)
    vocab = Vocabulary.fit(train)
    # Column 0: OOV, 7 (x3), 3, 9 (ties by id); column 1: OOV, 5 (x4), -1.
    np.testing.assert_array_equal(vocab.cardinalities, [4, 3])
    np.testing.assert_array_equal(vocab.offsets, [0, 4])
    assert vocab.size == 7
    np.testing.assert_array_equal(vocab.lookup(train),
                                  [[1, 6], [1, 5], [2, 5], [1, 5], [3, 5]])
    np.testing.assert_array_equal(vocab.lookup([[100, 5], [9, 42]]), [[0, 5], [3, 4]])
    rare = Vocabulary.fit(train, min_count=2)
    np.testing.assert_array_equal(rare.lookup([[3, -1], [7, 5]]), [[0, 2], [1, 3]])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        vocab.lookup(np.zeros((3, 3), np.int64))


def test_vocabulary_ranges_without_oov():
    vocab = Vocabulary.ranges([3, 2])
    np.testing.assert_array_equal(vocab.lookup([[0, 3], [2, 4], [3, 0]]),
                                  [[0, 3], [2, 4], [-1, -1]])
    assert vocab.oov_indices is None and vocab.size == 5


def make_data():
    rng = np.random.default_rng(0)
    raw = {}
    for split, n in (("train", 50), ("test", 20)):
        raw[split] = ({"dense": rng.random((n, 2)).astype(np.float32),
                       "categorical": rng.integers(0, 6, (n, 3))},
                      (rng.random(n) < 0.5).astype(np.float32))
    spec = FeatureSpec(dense_names=("d1", "d2"), categorical_names=("a", "b", "c"))
    return ArrayData.from_raw(spec, raw)


def test_array_data_datasets():
    data = make_data()
    assert data.spec.vocabulary_size == int(data.vocabulary.cardinalities.sum())
    batches = list(data.dataset("test", batch_size=8))
    assert [int(l.shape[0]) for _, l in batches] == [8, 8, 4]
    index = np.concatenate([f["categorical"].numpy() for f, _ in batches])
    np.testing.assert_array_equal(index, data.splits["test"]["index"])
    raw = np.concatenate([f["categorical"].numpy()
                          for f, _ in data.dataset("test", batch_size=8, ids="raw")])
    np.testing.assert_array_equal(raw, data.splits["test"]["categorical"])
    shuffled = np.concatenate([l.numpy() for _, l in data.dataset("train", 64, shuffle=True)])
    assert sorted(shuffled) == sorted(data.splits["train"]["label"])
    with pytest.raises(KeyError, match="unknown split"):
        data.dataset("dev")
    with pytest.raises(ValueError, match="ids"):
        data.dataset("test", ids="hashed")


def test_split_rows_partitions_all_rows():
    batch = ({"x": np.arange(101)}, np.arange(101, dtype=np.float32))
    parts = split_rows(batch, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=1)
    got = np.concatenate([p[0]["x"] for p in parts.values()])
    assert sorted(got) == list(range(101)) and len(parts["train"][1]) == 81
    with pytest.raises(ValueError, match="sum to 1"):
        split_rows(batch, {"a": 0.5, "b": 0.2})


def test_count_lines(tmp_path):
    (tmp_path / "a").write_bytes(b"x\ny\n")
    (tmp_path / "b").write_bytes(b"x\ny")
    (tmp_path / "c").write_bytes(b"")
    assert [count_lines(tmp_path / n) for n in "abc"] == [2, 2, 0]


def test_data_dir_override_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMREC_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir("/elsewhere") == Path("/elsewhere")
    for loader in (load_criteo_sample, load_frappe, load_movielens100k):
        with pytest.raises(FileNotFoundError, match="MEMREC_DATA_DIR"):
            loader()
    monkeypatch.delenv("MEMREC_DATA_DIR")
    assert data_dir() == Path(REPO_ROOT).resolve().parent / "shared" / "data"


def test_frequency_order_ranks_indices_by_training_count():
    train = np.array([[4, 1], [4, 2], [2, 4], [0, 4]], np.int64)
    new = frequency_order(train, 6)
    # Counts: 4 x4, 2 x2, 0 and 1 once (ties by index), 3 and 5 never seen.
    np.testing.assert_array_equal(new, [2, 3, 1, 4, 0, 5])
    assert sorted(new.tolist()) == list(range(6))  # a permutation
    with pytest.raises(ValueError, match="holds 6, outside \\[0, 6\\)"):
        frequency_order(np.array([1, 6]), 6)
