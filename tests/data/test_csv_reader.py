"""Headed CSV/TSV reader, column specs, hashing and the MovieLens loader."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf.data import (EMPTY_ID, ColumnSpec, CSVReader, MalformedLineError, count_lines,
                            hash_strings, hash_strings_tf, load_movielens100k,
                            movielens100k_dataset, sniff_delimiter)

from conftest import shared_data_dir


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_column_spec_parse():
    spec = ColumnSpec.parse("label=click,categorical=C1,C14,site_id,numeric=hour")
    assert spec == ColumnSpec("click", ("C1", "C14", "site_id"), ("hour",))
    assert ColumnSpec.parse("cat=a, b ,label=y").categorical == ("a", "b")
    with pytest.raises(ValueError, match="exactly one label"):
        ColumnSpec.parse("categorical=a,b")
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        ColumnSpec.parse("label=y,colour=red")
    with pytest.raises(ValueError, match="comes before"):
        ColumnSpec.parse("a,label=y")
    with pytest.raises(ValueError, match="more than once"):
        ColumnSpec.parse("label=y,categorical=a,numeric=a")


def test_hashing_is_stable_and_salted():
    ids = hash_strings(np.array([["5", "5", ""]], object), ["user", "item", "x"])
    assert ids[0, 0] != ids[0, 1] and ids[0, 2] == EMPTY_ID
    assert (ids[0, :2] >= 0).all()
    # The same FarmHash fingerprint TensorFlow computes in a graph.
    want = tf.strings.to_hash_bucket_fast(["user\x1f5"], 2**63 - 1).numpy()[0]
    assert ids[0, 0] == want
    np.testing.assert_array_equal(
        hash_strings_tf(tf.constant([["5", "5", ""]]), ["user", "item", "x"]).numpy(), ids)
    assert hash_strings(["abc"])[0] == hash_strings([b"abc"])[0]


def test_sniff_delimiter():
    assert sniff_delimiter("a,b,c") == ","
    assert sniff_delimiter("a\tb,c\td") == "\t"
    with pytest.raises(ValueError, match="delimiter"):
        sniff_delimiter("abc")


AVAZU = """id,click,hour,C1,banner_pos,site_id,app_id,C14
1000009418151094273,0,14102100,1005,0,1fbe01fe,ecad2386,15706
10000169349117863715,1,14102100,1005,0,,ecad2386,15704
10000371904215119486,0,,1002,1,85f751fd,"a,b",15706
"""


def test_avazu_like_csv_with_spec(tmp_path):
    path = write(tmp_path / "avazu.csv", AVAZU)
    reader = CSVReader(path, "label=click,categorical=C1,C14,site_id,app_id,numeric=hour",
                       batch_size=2)
    features, label = reader.read_all()
    np.testing.assert_array_equal(label, [0, 1, 0])
    np.testing.assert_array_equal(features["dense"][:, 0], [14102100, 14102100, 0])
    want = hash_strings(np.array([["1005", "15706", "1fbe01fe", "ecad2386"],
                                  ["1005", "15704", "", "ecad2386"],
                                  ["1002", "15706", "85f751fd", "a,b"]], object),
                        ["C1", "C14", "site_id", "app_id"])
    np.testing.assert_array_equal(features["categorical"], want)
    assert features["categorical"][1, 2] == EMPTY_ID
    assert reader.stats.header_lines == 1 and reader.stats.rows_read == 3
    assert reader.spec.categorical_names == ("C1", "C14", "site_id", "app_id")
    assert reader.spec.label_name == "click"
    # The graph-side hashing of dataset() gives the same ids.
    ds_cat = np.concatenate([f["categorical"].numpy() for f, _ in reader.dataset()])
    np.testing.assert_array_equal(ds_cat, want)


def test_talkingdata_like_tsv_with_other_label_name(tmp_path):
    text = ("ip\tapp\tdevice\tos\tchannel\tclick_time\tattributed_time\tis_attributed\n"
            "87540\t12\t1\t13\t497\t2017-11-07 09:30:38\t\t0\n"
            "105560\t25\t1\t17\t259\t2017-11-07 13:40:27\t2017-11-07 13:41:00\t1\n")
    path = write(tmp_path / "td.tsv", text)
    reader = CSVReader(path, {"label": "is_attributed",
                              "categorical": ["ip", "app", "device", "os", "channel"],
                              "numeric": []})
    features, label = reader.read_all()
    np.testing.assert_array_equal(label, [0, 1])
    assert features["categorical"].shape == (2, 5) and "dense" not in features


def test_malformed_csv_lines(tmp_path):
    text = ("y;a;n\n"          # 1 header
            "1;x;2.5\n"        # 2 good
            "0;y\n"            # 3 field count
            "2;x;1\n"          # 4 bad label
            "1;x;abc\n"        # 5 non-numeric
            "1;x;nan\n"        # 6 not finite
            "\n"               # 7 empty
            "0;;\n")           # 8 good: empty categorical and numeric
    path = tmp_path / "bad.csv"
    path.write_bytes(text.encode() + b"1;\xc3\x28;1\n")  # 9 invalid UTF-8
    reader = CSVReader(path, "label=y,categorical=a,numeric=n", numeric_transform="log1p")
    features, label = reader.read_all()
    stats = reader.stats
    assert stats.header_lines + stats.rows_read + stats.rows_rejected == count_lines(path) == 9
    assert (stats.rows_read, stats.rows_rejected) == (2, 6)
    assert [r.line for r in stats.rejects] == [3, 4, 5, 6, 7, 9]
    reasons = [r.reason for r in stats.rejects]
    assert "expected 3" in reasons[0] and "found 2" in reasons[0]
    assert "label column 'y' = '2'" in reasons[1]
    assert "numeric column 'n' = 'abc'" in reasons[2]
    assert "'nan'" in reasons[3]
    assert reasons[4] == "empty line"
    assert "UTF-8" in reasons[5]
    np.testing.assert_allclose(features["dense"][:, 0], [np.log(3.5), 0.0], rtol=1e-6)
    assert features["categorical"][1, 0] == EMPTY_ID
    with pytest.raises(MalformedLineError, match=r"bad\.csv at line 3"):
        list(CSVReader(path, "label=y,categorical=a,numeric=n", on_error="raise").iter_batches())


def test_header_problems_raise(tmp_path):
    path = write(tmp_path / "h.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['click'\]"):
        list(CSVReader(path, "label=click,categorical=a").iter_batches())
    empty = write(tmp_path / "e.csv", "")
    with pytest.raises(ValueError, match="empty"):
        list(CSVReader(empty, "label=a,categorical=b").iter_batches())


def test_typed_header_and_label_threshold(tmp_path):
    text = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
            "196\t242\t3\t881250949\n186\t302\t4\t891717742\n")
    path = write(tmp_path / "x.inter", text)
    reader = CSVReader(path, "label=rating,categorical=user_id,item_id,numeric=timestamp",
                       label_threshold=4)
    features, label = reader.read_all()
    np.testing.assert_array_equal(label, [0, 1])
    assert features["dense"][1, 0] == np.float32(891717742)
    with pytest.raises(MalformedLineError, match="not 0 or 1"):
        list(CSVReader(path, "label=rating,categorical=user_id", on_error="raise")
             .iter_batches())


@pytest.mark.data
def test_real_movielens():
    root = shared_data_dir() / "movielens100k"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set MEMREC_DATA_DIR)")
    data = load_movielens100k(shared_data_dir())
    assert {k: data.num_rows(k) for k in data.splits} == {
        "train": 80000, "dev": 10000, "test": 10000}
    assert data.spec.categorical_names == ("user_id", "item_id", "age", "gender", "occupation",
                                           "zip_code", "release_year", "genre")
    labels = np.concatenate([s["label"] for s in data.splits.values()])
    assert labels.mean() == pytest.approx(55375 / 100000)  # ratings 4 and 5
    # gender has 2 values + the OOV slot; all 943 users appear in train.
    cards = dict(zip(data.spec.categorical_names, data.spec.cardinalities))
    assert cards["gender"] == 3 and cards["user_id"] == 944
    index = data.splits["train"]["index"]
    assert index.min() >= 0 and index.max() < data.spec.vocabulary_size
    # Side features are joined by user: one user, one gender index.
    train = data.splits["train"]
    user0 = train["categorical"][:, 0] == train["categorical"][0, 0]
    assert len(np.unique(train["index"][user0, 3])) == 1
    # The streaming CSV reader hashes the same way as the loader.
    reader = CSVReader(root / "ml-100k.inter", "label=rating,categorical=user_id,item_id",
                       label_threshold=4, batch_size=100000)
    features, label = reader.read_all()
    assert reader.stats.rows_read == 100000 and label.mean() == pytest.approx(0.55375)
    assert set(features["categorical"][:, 0]) == set(train["categorical"][:, 0])
    ds, spec = movielens100k_dataset("test", batch_size=256, data_dir=shared_data_dir())
    batch, batch_label = next(iter(ds))
    assert batch["categorical"].shape == (256, spec.num_categorical)
