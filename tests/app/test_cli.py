"""The `memrec` command and the training module: formats, errors, strategies, resume."""
import gc
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from memrec_tf import cli, planning, training
from memrec_tf import export as export_lib
from memrec_tf.data import MalformedLineError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--synthetic-preset", "tiny", "--synthetic-rows", "16384", "--synthetic-eval-rows",
        "2048", "--batch-size", "256", "--learning-rate", "0.003", "--quiet"]


def run_cli(*args, env=None, timeout=300):
    """Runs `python -m memrec_tf.cli ARGS` in a fresh process."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "memrec_tf.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=full_env, timeout=timeout)


def test_train_synthetic_writes_model_and_metrics(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "2", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("auc", "logloss", "embedding_bytes", "full_embedding_bytes",
                "examples_per_second"):
        assert key in metrics, key
    assert metrics["auc"] > 0.6  # the planted signal is learnable
    assert metrics["full_embedding_bytes"] / metrics["embedding_bytes"] == pytest.approx(16, rel=0.05)
    assert metrics["examples_per_second"] > 0
    assert (out / "model.keras").is_file()
    again = training.evaluate(str(out), verbose=0)
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    assert again["embedding_bytes"] == metrics["embedding_bytes"]


@pytest.mark.parametrize("model,embedding", [("dcn", "qr"), ("dlrm", "hashing"),
                                             ("dlrm", "memrec_per_feature")])
def test_train_other_models_and_embeddings(tmp_path, model, embedding):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--model", model, "--embedding", embedding,
                     "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["embedding"] == embedding and metrics["model"] == model
    assert 0.0 <= metrics["auc"] <= 1.0


def _criteo_lines(rows, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        label = int(rng.random() < 0.3)
        ints = [str(int(v)) if rng.random() > 0.1 else "" for v in rng.integers(0, 50, 13)]
        cats = [f"{int(v):08x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 40, 26)]
        lines.append("\t".join([str(label), *ints, *cats]))
    return lines


def test_criteo_file_with_malformed_lines_is_counted(tmp_path):
    lines = _criteo_lines(300)
    lines[10] = "1\tnot-a-number" + "\t" * 38
    lines[20] = "0\t1\t2"  # wrong field count
    path = tmp_path / "day_0.tsv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert cli.main(["train", "--format", "criteo", "--train", str(path), "--eval", str(path),
                     "--batch-size", "64", "--quiet", "--output", str(out)]) == 0
    data = json.loads((out / "metrics.json").read_text())["data"]
    # Training and evaluation each read the file once.
    assert data["rows_rejected"] == 4
    assert data["rows_read"] + data["rows_rejected"] == 2 * 300
    assert any(":11:" in r for r in data["first_rejects"])


def _criteo_file_with_short_line_6(tmp_path):
    lines = _criteo_lines(50)
    lines[5] = "0\t1\t2"
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_criteo_raise_mode_stops_with_file_and_line(tmp_path):
    path = _criteo_file_with_short_line_6(tmp_path)
    result = run_cli("train", "--format", "criteo", "--train", str(path), "--on-error", "raise",
                     "--cardinalities", ",".join(["64"] * 26), "--quiet",
                     "--output", str(tmp_path / "run"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("memrec: error:") and "bad.tsv" in last and "line 6" in last
    assert "Traceback" not in result.stderr


def test_train_raise_mode_leaves_no_tf_data_iterator_behind(tmp_path):
    # The reader's error surfaces as its own MalformedLineError, and the
    # iterator that was reading is already freed: freed at interpreter exit
    # instead, it can hang the process (the CLI test above timed out so).
    from tensorflow.python.data.ops.iterator_ops import OwnedIterator

    path = _criteo_file_with_short_line_6(tmp_path)
    options = training.DataOptions(format="criteo", train=str(path), on_error="raise",
                                   cardinalities=[64] * 26)
    gc.collect()
    gc.disable()  # only the code under test may collect
    try:
        with pytest.raises(MalformedLineError) as info:
            training.train(options, str(tmp_path / "run"), batch_size=16, verbose=0)
        assert (info.value.path, info.value.line) == (str(path), 6)
        assert "expected 40" in info.value.reason
        del info
        alive = [o for o in gc.get_objects() if isinstance(o, OwnedIterator)]
    finally:
        gc.enable()
    assert alive == []


def test_libfm_and_csv_formats(tmp_path):
    rng = np.random.default_rng(1)
    libfm = tmp_path / "data.libfm"
    libfm.write_text("".join(
        f"{rng.choice([-1, 1])} {rng.integers(0, 10)}:1 {10 + rng.integers(0, 10)}:1\n"
        for _ in range(200)))
    out = tmp_path / "libfm_run"
    assert cli.main(["train", "--format", "libfm", "--libfm-fields", "2", "--train", str(libfm),
                     "--eval", str(libfm), "--batch-size", "64", "--quiet", "--compression", "2",
                     "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["data"]["rows_read"] == 400

    csv = tmp_path / "avazu.csv"
    rows = ["id,click,hour,site_id,app_id,banner_pos"]
    for i in range(200):
        rows.append(f"{i},{rng.integers(0, 2)},{rng.integers(0, 24)},s{rng.integers(0, 9)},"
                    f"a{rng.integers(0, 5)},{rng.integers(0, 3)}")
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "csv_run"
    assert cli.main(["train", "--format", "csv", "--train", str(csv), "--eval", str(csv),
                     "--columns", "label=click,categorical=site_id,app_id,banner_pos,numeric=hour",
                     "--batch-size", "64", "--quiet", "--compression", "2",
                     "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["rows_read"] == 400 and metrics["data"]["rows_rejected"] == 0


@pytest.mark.parametrize("args,needle", [
    (["train", "--format", "criteo"], "needs --train FILE"),
    (["train", "--format", "criteo", "--train", "/nonexistent/day_0"], "not found"),
    (["train", "--epochs", "0"], "positive"),
    (["train", "--embedding", "bogus"], "invalid choice"),
    (["train", "--embedding", "qr", "--num-hashes", "3"], "apply only to"),
    (["evaluate", "--model-dir", "/nonexistent/run"], "no trained model"),
    (["plan"], "--cardinalities"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_nonzero_exit(args, needle):
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("memrec:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


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


def test_plan_counts_values_and_proposes_head_rows(tmp_path, capsys):
    # Feature 0 has 40 values with Zipf-like counts, feature 1 has 300 rare ones.
    rng = np.random.default_rng(3)
    lines, counts = [], {}
    for i in range(3000):
        a = min(int(rng.zipf(1.5)) - 1, 39)
        b = 40 + int(rng.integers(0, 300))
        counts[a] = counts.get(a, 0) + 1
        counts[b] = counts.get(b, 0) + 1
        lines.append(f"{i % 2} {a}:1 {b}:1\n")
    path = tmp_path / "train.libfm"
    path.write_text("".join(lines))
    args = ["plan", "--format", "libfm", "--libfm-fields", "2", "--data", str(path), "--json"]
    assert cli.main([*args, "--compression", "4"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # The counted values and one out-of-vocabulary index per feature.
    assert plan["vocabulary_size"] == len(counts) + 2
    head = plan["methods"]["memrec_vocabulary_head"]
    rows = head["options"]["num_head_rows"]
    assert rows == int(planning.HEAD_FRACTION * head["options"]["num_token_rows"])
    top = sorted(counts.values(), reverse=True)[:rows]
    assert head["head_share_of_occurrences"] == pytest.approx(sum(top) / 6000, abs=1e-4)
    assert head["bytes"] <= plan["budget_bytes"]
    assert plan["recommended"]["method"] == "memrec_vocabulary_head"
    # Past the measured range (/16) the hashed shared layer is recommended.
    assert cli.main([*args, "--compression", "32"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recommended"]["method"] == "memrec"
    # Without counts (cardinalities only) there is no head-row entry.
    assert cli.main(["plan", "--cardinalities", "40,300", "--compression", "4", "--json"]) == 0
    assert "memrec_vocabulary_head" not in json.loads(capsys.readouterr().out)["methods"]


def test_train_vocabulary_head_as_planned_then_evaluate_and_export(tmp_path, capsys):
    # The plan's recommended configuration trains from raw ids as planned; the
    # model maps them itself, so the built-in-ops export serves raw ids.
    rng = np.random.default_rng(4)
    lines = []
    for _ in range(3000):
        a, b = min(int(rng.zipf(1.5)) - 1, 39), 40 + int(rng.integers(0, 300))
        lines.append(f"{int((a % 3 == 0) ^ (rng.random() < 0.1))} {a}:1 {b}:1\n")
    path = tmp_path / "train.libfm"
    path.write_text("".join(lines))
    data = ["--format", "libfm", "--libfm-fields", "2"]
    assert cli.main(["plan", *data, "--data", str(path), "--compression", "4", "--json"]) == 0
    recommended = json.loads(capsys.readouterr().out)["recommended"]
    assert recommended["method"] == "memrec_vocabulary_head"
    out = tmp_path / "run"
    assert cli.main(["train", *data, "--train", str(path), "--eval", str(path), "--compression",
                     "4", "--embedding", "memrec_vocabulary_head", "--epochs", "3",
                     "--batch-size", "64", "--learning-rate", "0.01", "--quiet",
                     "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    planned = dict(recommended["options"])
    assert metrics["embedding_options"] == {k: v for k, v in planned.items()
                                            if k != "vocabulary_size"}
    assert metrics["full_embedding_bytes"] == planned["vocabulary_size"] * 16 * 4
    assert metrics["vocabulary_mapping_bytes"] == 8 * (2 * (planned["vocabulary_size"] - 2) + 2)
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
    model = training.load_model(str(out))
    np.testing.assert_allclose(served.numpy(), model({"categorical": ids}).numpy(), atol=1e-6)


@pytest.mark.parametrize("embedding", ["full_vocabulary", "qr_vocabulary"])
def test_collision_free_baselines_from_raw_ids(tmp_path, embedding):
    rng = np.random.default_rng(5)
    values = [rng.choice(10**9, 30, replace=False), rng.choice(10**9, 70, replace=False)]
    rows = [(rng.integers(0, 2), rng.choice(values[0]), rng.choice(values[1]))
            for _ in range(400)]
    path = tmp_path / "train.csv"
    path.write_text("click,a,b\n" + "".join(f"{y},{a},{b}\n" for y, a, b in rows))
    out = tmp_path / "run"
    assert cli.main(["train", "--format", "csv", "--columns", "label=click,categorical=a,b",
                     "--train", str(path), "--eval", str(path), "--embedding", embedding,
                     "--compression", "4", "--batch-size", "64", "--quiet",
                     "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The counted values and an OOV index per feature.
    vocab = len({a for _, a, _ in rows}) + len({b for _, _, b in rows}) + 2
    assert metrics["full_embedding_bytes"] == vocab * 16 * 4
    if embedding == "full_vocabulary":
        assert metrics["embedding_bytes"] == metrics["full_embedding_bytes"]
    else:
        rows = metrics["embedding_options"]["remainder_rows"]
        assert rows * metrics["embedding_options"]["quotient_rows"] >= vocab
        assert metrics["embedding_bytes"] <= metrics["full_embedding_bytes"] / 4


def test_vocabulary_embedding_needs_a_training_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--embedding", "memrec_vocabulary",
                     "--output", str(out)]) == 2
    assert "synthetic format has none" in capsys.readouterr().err
    assert not out.exists()


def test_plan_rejects_counts_that_do_not_match_the_cardinalities():
    with pytest.raises(ValueError, match="value_counts has 3 counts; the cardinalities sum to 5"):
        planning.plan([2, 3], 16, compression=2, value_counts=[1, 2, 3])


def test_count_values_merges_batches_exactly():
    rng = np.random.default_rng(0)
    batches = [rng.integers(-5, [4, 200_000], size=(30_000, 2)) for _ in range(6)]

    class Reader:
        def iter_batches(self):
            for b in batches:
                yield {"categorical": b}, None

    counted = training.count_values(Reader())
    everything = np.concatenate(batches)
    for j in range(2):
        values, counts = np.unique(everything[:, j], return_counts=True)
        np.testing.assert_array_equal(counted[j][0], values)
        np.testing.assert_array_equal(counted[j][1], counts)
    assert training.count_cardinalities(Reader()) == [len(counted[0][0]), len(counted[1][0])]


def test_export_command_writes_a_core_savedmodel(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--output", str(out)]) == 0
    export_dir = tmp_path / "export"
    assert cli.main(["export", "--model-dir", str(out), "--output", str(export_dir)]) == 0
    assert (export_dir / "saved_model.pb").is_file()
    # A second export to the same path is refused without --overwrite.
    result = run_cli("export", "--model-dir", str(out), "--output", str(export_dir), timeout=120)
    assert result.returncode == 2 and "--overwrite" in result.stderr


class _StopAfterFirstEpoch(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated preemption")


def test_resume_from_checkpoint_reaches_the_uninterrupted_weights(tmp_path):
    options = dict(synthetic_preset="tiny", synthetic_rows=2048, synthetic_eval_rows=512)
    kwargs = dict(epochs=3, batch_size=256, verbose=0)
    straight = tmp_path / "straight"
    training.train(training.DataOptions(**options), str(straight), **kwargs)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        training.train(training.DataOptions(**options), str(resumed),
                       callbacks=[_StopAfterFirstEpoch()], **kwargs)
    assert (resumed / "backup").is_dir()
    training.train(training.DataOptions(**options), str(resumed), **kwargs)
    a = training.load_model(str(straight)).get_weights()
    b = training.load_model(str(resumed)).get_weights()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


_WEIGHTS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    if os.environ.get("LOGICAL_CPUS"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["LOGICAL_CPUS"]))
    from memrec_tf import training
    out, strategy, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    training.train(training.DataOptions(synthetic_preset="tiny", synthetic_rows=2048,
                                        synthetic_eval_rows=256),
                   out, epochs=1, batch_size=batch, strategy=strategy, verbose=0,
                   # SGD: Adam's normalisation would magnify the float
                   # reassociation of an all-reduce on near-zero gradients.
                   optimizer="sgd", learning_rate=0.1)
    if os.path.exists(os.path.join(out, "model.keras")):
        w = training.load_model(out).get_weights()
        np.savez(os.path.join(out, "weights.npz"), *w)
""")


def _weights(path):
    with np.load(path / "weights.npz") as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def _train_in_process(tmp_path, name, strategy, batch, env=None):
    out = tmp_path / name
    script = tmp_path / "train_weights.py"
    script.write_text(_WEIGHTS_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(out), strategy, str(batch)],
                            cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                                               **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mirrored_and_multi_worker_match_single_device(tmp_path):
    """2 replicas at batch B each see the rows one device sees at batch 2B."""
    single, single_out = _train_in_process(tmp_path, "single", "default", 512)
    mirrored, mirrored_out = _train_in_process(tmp_path, "mirrored", "mirrored", 256,
                                               env={"LOGICAL_CPUS": "2"})
    ports = [_free_port(), _free_port()]
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        workers.append(_train_in_process(tmp_path, f"worker{index}", "multi-worker", 256,
                                         env={"TF_CONFIG": json.dumps(config)}))
    for proc, _ in [(single, None), (mirrored, None), *workers]:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    expected = _weights(single_out)
    for out in (mirrored_out, workers[0][1]):
        got = _weights(out)
        assert len(got) == len(expected)
        for x, y in zip(expected, got):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    # Only the chief writes the model.
    assert not (workers[1][1] / "model.keras").exists()
