"""Criteo TSV reader: exact parsing, malformed lines, batching, real sample."""
import gzip
import math
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf.data import (EMPTY_ID, CriteoTSVReader, MalformedLineError, count_lines,
                            load_criteo_sample)

from conftest import shared_data_dir


def criteo_line(label="1", ints=None, cats=None) -> bytes:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{0x1000 + j:08x}" for j in range(26)]
    assert len(ints) == 13 and len(cats) == 26
    return "\t".join([label, *ints, *cats]).encode()


def write(path: Path, lines, final_newline=True) -> Path:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.write_bytes(data)
    return path


def test_parses_known_lines_with_empty_fields(tmp_path):
    ints = ["5", "", "-1", "0", "100", "", "", "", "", "", "", "", "1"]
    cats = ["68fd1e64", ""] + ["FFFFFFFF"] + [""] * 22 + ["0000000a"]
    path = write(tmp_path / "a.tsv", [criteo_line("1", ints, cats),
                                      criteo_line("0", [""] * 13, [""] * 26)])
    features, label = CriteoTSVReader(path).read_all()
    np.testing.assert_array_equal(label, [1.0, 0.0])
    expected = np.zeros(13)
    expected[0], expected[4], expected[12] = math.log(6), math.log(101), math.log(2)
    np.testing.assert_allclose(features["dense"][0], expected, rtol=1e-6)
    np.testing.assert_array_equal(features["dense"][1], np.zeros(13))
    assert features["dense"].dtype == np.float32
    want = [0x68FD1E64, EMPTY_ID, 0xFFFFFFFF] + [EMPTY_ID] * 22 + [10]
    np.testing.assert_array_equal(features["categorical"][0], want)
    np.testing.assert_array_equal(features["categorical"][1], [EMPTY_ID] * 26)
    assert features["categorical"].dtype == np.int64


def random_lines(rng, n):
    lines = []
    for _ in range(n):
        ints = ["" if rng.random() < 0.2
                else str(int(rng.integers(-3, 10**int(rng.integers(1, 8))))) for _ in range(13)]
        cats = []
        for _ in range(26):
            r = rng.random()
            value = int(rng.integers(0, 2**32))
            cats.append("" if r < 0.15 else f"{value:08X}" if r < 0.3 else f"{value:x}")
        lines.append(criteo_line(str(int(rng.integers(0, 2))), ints, cats))
    return lines


def test_fast_path_matches_line_by_line_parse(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "r.tsv"
    path.write_bytes(b"\r\n".join(random_lines(rng, 600)) + b"\r\n")  # CRLF too
    fast = CriteoTSVReader(path, fast_path=True)
    fast.block_bytes = 8192
    slow = CriteoTSVReader(path, fast_path=False)
    (f1, l1), (f2, l2) = fast.read_all(), slow.read_all()
    assert len(l1) == 600
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(f1["categorical"], f2["categorical"])
    np.testing.assert_array_equal(f1["dense"], f2["dense"])


def planted_file(tmp_path):
    """13 lines: 6 good, 7 malformed at lines 3, 5, 7, 8, 9, 11, 13."""
    good = random_lines(np.random.default_rng(1), 6)
    bad_utf8 = criteo_line(cats=[f"{j:08x}" for j in range(26)]).replace(
        b"00000003", b"\xff\xfe000003")
    lines = [good[0], good[1],
             b"\t".join(criteo_line().split(b"\t")[:39]),              # 3: 39 fields
             good[2],
             criteo_line(ints=["1", "2", "abc"] + ["0"] * 10),          # 5: non-numeric I3
             good[3],
             criteo_line(label="2"),                                     # 7: bad label
             bad_utf8,                                                   # 8: invalid UTF-8
             b"",                                                        # 9: empty line
             good[4],
             criteo_line(cats=["zzzzzzzz"] + ["0"] * 25),               # 11: bad hex C1
             good[5],
             criteo_line(cats=["0"] * 4 + ["-1"] + ["0"] * 21)]         # 13: negative C5
    return write(tmp_path / "planted.tsv", lines, final_newline=False), good


def test_malformed_lines_are_counted_with_line_numbers(tmp_path):
    path, good = planted_file(tmp_path)
    reader = CriteoTSVReader(path, batch_size=4)
    features, label = reader.read_all()
    stats = reader.stats
    assert count_lines(path) == 13
    assert (stats.rows_read, stats.rows_rejected) == (6, 7)
    assert stats.rows_read + stats.rows_rejected == count_lines(path)
    assert [r.line for r in stats.rejects] == [3, 5, 7, 8, 9, 11, 13]
    reasons = [r.reason for r in stats.rejects]
    assert "expected 40" in reasons[0] and "found 39" in reasons[0]
    assert "I3" in reasons[1] and "'abc'" in reasons[1]
    assert "label" in reasons[2] and "'2'" in reasons[2]
    assert "UTF-8" in reasons[3] and "0xff" in reasons[3]
    assert reasons[4] == "empty line"
    assert "C1" in reasons[5] and "zzzzzzzz" in reasons[5]
    assert "C5" in reasons[6] and "'-1'" in reasons[6]
    assert all(r.path == str(path) for r in stats.rejects)
    assert stats.complete and stats.last_pass.rows_rejected == 7
    # The kept rows are exactly the good lines.
    clean = write(tmp_path / "clean.tsv", good)
    want_features, want_label = CriteoTSVReader(clean).read_all()
    np.testing.assert_array_equal(label, want_label)
    np.testing.assert_array_equal(features["categorical"], want_features["categorical"])


def test_counts_hold_over_many_blocks(tmp_path):
    rng = np.random.default_rng(2)
    lines = random_lines(rng, 3000)
    bad_at = sorted(rng.choice(3000, size=25, replace=False).tolist())
    for i in bad_at:
        lines[i] = lines[i].replace(b"\t", b"\tx", 1)  # I1 becomes non-numeric
    path = write(tmp_path / "many.tsv", lines)
    reader = CriteoTSVReader(path, batch_size=1000)
    reader.block_bytes = 16384
    sizes = [len(label) for _, label in reader.iter_batches()]
    assert reader.stats.rows_rejected == 25
    assert reader.stats.rows_read + reader.stats.rows_rejected == count_lines(path) == 3000
    assert sum(sizes) == 3000 - 25 and sizes[:-1] == [1000] * (len(sizes) - 1)
    assert [r.line for r in reader.stats.rejects] == [i + 1 for i in bad_at[:20]]


def test_raise_mode_names_file_and_line(tmp_path):
    path, _ = planted_file(tmp_path)
    reader = CriteoTSVReader(path, on_error="raise")
    with pytest.raises(MalformedLineError) as info:
        list(reader.iter_batches())
    err = info.value
    assert (err.path, err.line) == (str(path), 3)
    assert str(path) in str(err) and "line 3" in str(err) and "expected 40" in str(err)
    with pytest.raises(tf.errors.OpError, match=r"planted\.tsv at line 3: expected 40"):
        list(CriteoTSVReader(path, on_error="raise").dataset())


def test_on_error_is_validated(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        CriteoTSVReader(tmp_path / "x.tsv", on_error="ignore")


def test_batches_span_files_and_dataset_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    a = write(tmp_path / "a.tsv", random_lines(rng, 11))
    b = tmp_path / "b.tsv.gz"
    with gzip.open(b, "wb") as fh:
        fh.write(b"\n".join(random_lines(rng, 9)) + b"\n")
    reader = CriteoTSVReader([a, b], batch_size=7)
    numpy_batches = list(reader.iter_batches())
    assert [len(l) for _, l in numpy_batches] == [7, 7, 6]
    assert reader.stats.by_file[str(a)].rows_read == 11
    assert reader.stats.by_file[str(b)].rows_read == 9
    tf_batches = list(reader.dataset())
    assert reader.stats.passes_completed == 2 and reader.stats.rows_read == 20
    for (nf, nl), (tf_f, tf_l) in zip(numpy_batches, tf_batches):
        np.testing.assert_array_equal(nl, tf_l.numpy())
        np.testing.assert_array_equal(nf["categorical"], tf_f["categorical"].numpy())
        np.testing.assert_array_equal(nf["dense"], tf_f["dense"].numpy())
    spec_features, spec_label = reader.spec.element_spec()
    assert tf_batches[0][0]["dense"].shape[1] == spec_features["dense"].shape[1] == 13
    assert reader.spec.num_categorical == 26 and reader.spec.categorical_names[0] == "C1"


@pytest.mark.data
def test_real_criteo_sample():
    root = shared_data_dir() / "criteo_sample"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set MEMREC_DATA_DIR)")
    start = time.perf_counter()
    reader = CriteoTSVReader(root / "train.tsv")
    features, label = reader.read_all()
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"7,200 lines took {elapsed:.2f}s"
    assert (reader.stats.rows_read, reader.stats.rows_rejected) == (7200, 0)
    assert 0.15 < label.mean() < 0.35
    first = [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, 0, 2]
    np.testing.assert_allclose(features["dense"][0], np.log1p(first), rtol=1e-6)
    assert features["categorical"][0, 0] == 0x68FD1E64
    assert features["categorical"][0, 21] == EMPTY_ID

    data = load_criteo_sample(shared_data_dir())
    assert {k: data.num_rows(k) for k in data.splits} == {"train": 7200, "dev": 409, "test": 391}
    vocab_size = data.spec.vocabulary_size
    train_index = data.splits["train"]["index"]
    assert train_index.min() >= 0 and train_index.max() < vocab_size
    assert not np.isin(train_index, data.vocabulary.offsets).any()  # no OOV in train
    test_index = data.splits["test"]["index"]
    assert test_index.max() < vocab_size
    assert np.isin(test_index, data.vocabulary.offsets).any()  # unseen values exist
    assert sum(data.spec.cardinalities) == vocab_size
    (batch, batch_label), = data.dataset("dev", batch_size=512).take(1)
    assert batch["categorical"].shape == (409, 26) and batch_label.shape == (409,)
