"""`memrec plan`: every method sized to the budget, counted values and head rows,
and the bytes it plans are those `memrec train` then builds."""
import json

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import saved_model as export_lib
from memrec_tf import sizing
from memrec_tf.app import cli, planning, runs, training

from conftest import shared_data_file

def test_plan_sizes_every_method_to_the_budget(capsys):
    assert cli.main(["plan", "--cardinalities", "100000,5000,30", "--compression", "32",
                     "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    budget = plan["budget_bytes"]
    assert plan["full_bytes"] == 105030 * 16 * 4
    for name, method in plan["methods"].items():
        assert method["bytes"] <= budget, name
    memrec = plan["methods"]["memrec"]["options"]
    assert memrec["num_token_rows"] * 16 * 4 + memrec["num_weight_rows"] * 4 <= budget
    assert plan["recommended"]["method"] == "memrec"


def _zipf_libfm(tmp_path, rows=3000, seed=3):
    """Feature 0: 40 values with Zipf-like counts; feature 1: 300 rare ones."""
    rng = np.random.default_rng(seed)
    lines, counts = [], {}
    for _ in range(rows):
        a = min(int(rng.zipf(1.5)) - 1, 39)
        b = 40 + int(rng.integers(0, 300))
        counts[a] = counts.get(a, 0) + 1
        counts[b] = counts.get(b, 0) + 1
        lines.append(f"{int((a % 3 == 0) ^ (rng.random() < 0.1))} {a}:1 {b}:1\n")
    path = tmp_path / "train.libfm"
    path.write_text("".join(lines))
    return path, counts


def test_plan_counts_the_mapping_of_vocabulary_signatures(tmp_path, capsys):
    path, counts = _zipf_libfm(tmp_path)
    args = ["plan", "--format", "libfm", "--libfm-fields", "2", "--data", str(path), "--json"]
    assert cli.main([*args, "--compression", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # The counted values and one out-of-vocabulary index per feature.
    assert plan["vocabulary_size"] == len(counts) + 2
    mapping = sizing.vocabulary_mapping_bytes(plan["cardinalities"])
    for name in ("memrec_vocabulary", "memrec_vocabulary_head"):
        entry = plan["methods"][name]  # raw ids: the mapping is part of its bytes
        assert entry["mapping_bytes"] == mapping
        assert entry["bytes"] == entry["table_bytes"] + mapping <= plan["budget_bytes"]
        assert entry["compression"] == round(plan["full_bytes"] / entry["bytes"], 2)
        # Ids already mapped by a vocabulary layer: the whole budget for tables.
        mapped = plan["vocabulary_layer"][name]
        assert mapped["mapping_bytes"] == 0
        assert entry["table_bytes"] < mapped["table_bytes"] <= plan["budget_bytes"]
    head = plan["vocabulary_layer"]["memrec_vocabulary_head"]
    rows = head["options"]["num_head_rows"]
    assert rows == int(sizing.HEAD_FRACTION * head["options"]["num_token_rows"])
    top = sorted(counts.values(), reverse=True)[:rows]
    assert head["head_share_of_occurrences"] == pytest.approx(sum(top) / 6000, abs=1e-4)
    assert plan["recommended"]["method"] == "memrec"  # hashed: no mapping to serve
    # At /16 the mapping alone is past the budget: left out, saying why.
    assert cli.main([*args, "--compression", "16"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert "memrec_vocabulary" not in plan["methods"]
    assert f"takes {mapping:,} of the" in plan["left_out"]["memrec_vocabulary"]
    assert "memrec_vocabulary" in plan["vocabulary_layer"]
    # Without counts (cardinalities only) there is no head-row entry.
    assert cli.main(["plan", "--cardinalities", "40,300", "--compression", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert "memrec_vocabulary_head" not in plan["methods"]
    assert "memrec_vocabulary_head" not in plan["vocabulary_layer"]
    assert cli.main(["plan", "--cardinalities", "40,300", "--compression", "4"]) == 0
    text = capsys.readouterr().out
    assert "raw ids: every byte counted" in text and "ids already mapped" in text


def test_plan_sizes_int8_tables_in_served_bytes(capsys):
    flags = ["plan", "--cardinalities", "100000,5000,30", "--compression", "16", "--json"]
    assert cli.main(flags) == 0
    f32 = json.loads(capsys.readouterr().out)
    assert cli.main([*flags, "--table-dtype", "int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert int8["budget_bytes"] == f32["budget_bytes"]
    for plan in (f32, int8):
        for method in plan["methods"].values():
            assert method["bytes"] <= plan["budget_bytes"]
    rows = [p["methods"]["memrec"]["options"]["num_token_rows"] for p in (f32, int8)]
    assert rows[1] > 3 * rows[0]  # d=16: 20 bytes a row against 64


@pytest.mark.slow
def test_train_vocabulary_head_as_planned_then_evaluate_and_export(tmp_path, capsys):
    # The plan's recommended configuration trains from raw ids as planned; the
    # model maps them itself, so the built-in-ops export serves raw ids.
    path, _ = _zipf_libfm(tmp_path, seed=4)
    data = ["--format", "libfm", "--libfm-fields", "2"]
    assert cli.main(["plan", *data, "--data", str(path), "--compression", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    recommended = plan["methods"]["memrec_vocabulary_head"]
    out = tmp_path / "run"
    assert cli.main(["train", *data, "--train", str(path), "--eval", str(path), "--compression",
                     "2", "--embedding", "memrec_vocabulary_head", "--epochs", "3",
                     "--batch-size", "64", "--learning-rate", "0.01", "--quiet",
                     "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    planned = dict(recommended["options"])
    assert metrics["embedding_options"] == {k: v for k, v in planned.items()
                                            if k != "vocabulary_size"}
    assert metrics["full_embedding_bytes"] == planned["vocabulary_size"] * 16 * 4
    assert metrics["vocabulary_mapping_bytes"] == 8 * (2 * (planned["vocabulary_size"] - 2) + 2)
    assert metrics["embedding_bytes"] == recommended["bytes"]
    assert metrics["auc"] > 0.8  # the label is a function of feature 0's value
    again = training.evaluate(str(out), verbose=0)
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    export_dir = tmp_path / "export"
    assert cli.main(["export", "--model-dir", str(out), "--output", str(export_dir),
                     "--mode", "core"]) == 0
    assert export_lib.memrec_op_types(str(export_dir)) == set()
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    ids = np.array([[0, 40], [39, 339], [10**12, -5]], np.int64)  # the last row unseen
    (served,) = serve(categorical=tf.constant(ids)).values()
    model = runs.load_model(str(out))
    np.testing.assert_allclose(served.numpy(), model({"categorical": ids}).numpy(), atol=1e-6)


def test_plan_rejects_counts_that_do_not_match_the_cardinalities():
    with pytest.raises(ValueError, match="value_counts has 3 counts; the cardinalities sum to 5"):
        planning.plan([2, 3], 16, compression=2, value_counts=[1, 2, 3])


# The shipped data sets, under ../shared/data (or $MEMREC_DATA_DIR).
SHIPPED = {"frappe": ("frappe", "frappe.validation.libfm"),
           "criteo_sample": ("criteo_sample", "train.tsv")}


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(SHIPPED))
def test_plan_and_train_report_the_same_bytes(dataset, tmp_path, capsys):
    # Same file, same flags: the MEM-REC layer `memrec plan` sizes is the one
    # `memrec train` builds, and both count the same full tables.
    path = str(shared_data_file(*SHIPPED[dataset]))
    flags = ["--compression", "16", "--embedding-dim", "16"]
    assert cli.main(["plan", "--data", path, "--json", *flags]) == 0
    plan = json.loads(capsys.readouterr().out)
    out = tmp_path / "run"
    assert cli.main(["train", "--train", path, "--epochs", "1", "--batch-size", "8192",
                     "--quiet", "--output", str(out), *flags]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    memrec = plan["methods"]["memrec"]
    planned = {"full_bytes": plan["full_bytes"], "bytes": memrec["bytes"]}
    trained = {"full_bytes": metrics["full_embedding_bytes"], "bytes": metrics["embedding_bytes"]}
    assert trained == planned, (f"plan options {memrec['options']}, "
                                f"train options {metrics['embedding_options']}")
