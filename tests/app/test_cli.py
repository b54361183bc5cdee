"""The `memrec` command and its training runs: formats, errors, export, strategies, resume.

Argument errors run `memrec_tf.app.cli.main` (which is `memrec_cli.main`) in this process; a child process
runs the command only where the process itself is under test (it must exit
after a reader's error instead of hanging) and for the multi-worker cluster.
`memrec plan` is tested in test_planning.py.
"""
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

from memrec_tf.app import cli, runs, saved_model_cli, sources, training
from memrec_tf.data import MalformedLineError

from conftest import REPO_ROOT as ROOT

TINY = ["--synthetic-preset", "tiny", "--synthetic-rows", "16384", "--synthetic-eval-rows",
        "2048", "--batch-size", "256", "--learning-rate", "0.003", "--quiet"]


def run_cli(*args, env=None, timeout=300):
    """Runs `python -m memrec_cli ARGS` in a fresh process."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "memrec_cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=full_env, timeout=timeout)


def run_main(argv, capsys):
    """`memrec ARGV` in this process: (exit status, the lines it wrote to stderr).

    argparse ends a bad command line with SystemExit (what `python -m
    memrec_cli` exits with); the other errors are returned by main().
    """
    capsys.readouterr()  # drop what came before
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


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


@pytest.mark.slow
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
    metrics = json.loads((out / "metrics.json").read_text())
    # Training and evaluation each read the file once, each with its own count.
    for data in (metrics["data"], metrics["eval_data"]):
        assert data["rows_rejected"] == 2
        assert data["rows_read"] + data["rows_rejected"] == 300
        assert any(":11:" in r for r in data["first_rejects"])


def _criteo_file_with_short_line_6(tmp_path):
    lines = _criteo_lines(50)
    lines[5] = "0\t1\t2"
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_criteo_raise_mode_stops_with_file_and_line(tmp_path):
    # In a child process: the process must also exit (a tf.data iterator
    # left for the interpreter's exit made it hang there).
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
    options = sources.DataOptions(format="criteo", train=str(path), on_error="raise",
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


@pytest.mark.slow
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
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["rows_read"] == metrics["eval_data"]["rows_read"] == 200

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
    for data in (metrics["data"], metrics["eval_data"]):
        assert data["rows_read"] == 200 and data["rows_rejected"] == 0


@pytest.mark.parametrize("args,needle", [
    (["train", "--format", "criteo"], "needs --train FILE"),
    (["train", "--format", "criteo", "--train", "/nonexistent/day_0"], "no such file"),
    (["train", "--epochs", "0"], "positive"),
    (["train", "--embedding", "bogus"], "invalid choice"),
    (["train", "--embedding", "qr", "--num-hashes", "3"], "apply only to"),
    (["train", "--fused-update", "--optimizer", "sgd", "--embedding", "full"],
     "applies to --embedding memrec"),
    (["evaluate", "--model-dir", "/nonexistent/run"], "no trained model"),
    (["plan"], "--cardinalities"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --output, runs/train, goes there
    code, err = run_main(args, capsys)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("memrec: error:") and needle in err[0], err


@pytest.mark.slow
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
                     "--compression", "2", "--batch-size", "64", "--quiet",
                     "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # The counted values and an OOV index per feature.
    vocab = len({a for _, a, _ in rows}) + len({b for _, _, b in rows}) + 2
    assert metrics["full_embedding_bytes"] == vocab * 16 * 4
    # Every byte the model needs: its tables and its id -> index mapping.
    assert metrics["vocabulary_mapping_bytes"] == 8 * (2 * (vocab - 2) + 2)
    assert metrics["embedding_bytes"] == (metrics["embedding_table_bytes"]
                                          + metrics["vocabulary_mapping_bytes"])
    if embedding == "full_vocabulary":
        assert metrics["embedding_table_bytes"] == metrics["full_embedding_bytes"]
    else:
        rows = metrics["embedding_options"]["remainder_rows"]
        assert rows * metrics["embedding_options"]["quotient_rows"] >= vocab
        # --compression sizes every byte: the mapping takes its share first.
        assert metrics["embedding_bytes"] <= metrics["full_embedding_bytes"] / 2


def test_vocabulary_embedding_needs_a_training_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--embedding", "memrec_vocabulary",
                     "--output", str(out)]) == 2
    assert "synthetic format has none" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_export_command_writes_a_core_savedmodel(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--output", str(out)]) == 0
    export_dir = tmp_path / "export"
    assert cli.main(["export", "--model-dir", str(out), "--output", str(export_dir)]) == 0
    assert (export_dir / "saved_model.pb").is_file()
    # A second export to the same path is refused without --overwrite.
    code, err = run_main(["export", "--model-dir", str(out), "--output", str(export_dir)],
                         capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0], err
    assert run_main(["export", "--model-dir", str(out), "--output", str(export_dir),
                     "--overwrite"], capsys)[0] == 0


def test_saved_model_cli_subcommand_runs_the_wrapper(monkeypatch):
    # `memrec saved-model-cli ARGS` is `python -m memrec_tf.app.saved_model_cli ARGS`.
    calls = []
    monkeypatch.setattr(saved_model_cli, "main", lambda argv: calls.append(argv) or 0)
    assert cli.main(["saved-model-cli", "show", "--dir", "/x", "--all"]) == 0
    assert calls == [["show", "--dir", "/x", "--all"]]


class _StopAfterFirstEpoch(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated preemption")


@pytest.mark.slow
@pytest.mark.parametrize("update", [{}, dict(fused_update=True, optimizer="adagrad",
                                                learning_rate=0.05)], ids=["model", "fused"])
def test_resume_from_checkpoint_reaches_the_uninterrupted_weights(tmp_path, update):
    # With --fused-update the backup must hold the token tables' optimizer
    # state (Adagrad's accumulator, the update count) too.
    options = dict(synthetic_preset="tiny", synthetic_rows=2048, synthetic_eval_rows=512)
    kwargs = dict(epochs=3, batch_size=256, verbose=0, **update)
    straight = tmp_path / "straight"
    training.train(sources.DataOptions(**options), str(straight), **kwargs)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        training.train(sources.DataOptions(**options), str(resumed),
                       callbacks=[_StopAfterFirstEpoch()], **kwargs)
    assert (resumed / "backup").is_dir()
    metrics = training.train(sources.DataOptions(**options), str(resumed), **kwargs)
    assert metrics["epochs"] == 3  # the interrupted run's epoch included
    a = runs.load_model(str(straight)).get_weights()
    b = runs.load_model(str(resumed)).get_weights()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer, learning_rate, class_name",
                         [("sgd", 0.1, "SGD"), ("adam", 1e-3, "Adam")])
def test_fused_update_trains_as_the_model_optimizer_does(tmp_path, optimizer, learning_rate,
                                                         class_name):
    options = sources.DataOptions(synthetic_preset="tiny", synthetic_rows=2048,
                                  synthetic_eval_rows=512)
    kwargs = dict(epochs=2, batch_size=256, verbose=0, optimizer=optimizer,
                  learning_rate=learning_rate)
    model = training.train(options, str(tmp_path / "model"), **kwargs)
    fused = training.train(options, str(tmp_path / "fused"), fused_update=True, **kwargs)
    # SGD and Adam applied in the gradient kernel equal Keras' bit for bit.
    assert fused["auc"] == model["auc"] and fused["logloss"] == model["logloss"]
    run = json.loads((tmp_path / "fused" / runs.RUN_FILE).read_text())
    assert run["settings"]["fused_update"] is True
    assert run["embedding_options"]["embedding_optimizer"]["class_name"] == class_name
    layer = [w for w in runs.load_model(str(tmp_path / "fused")).non_trainable_weights
             if "embedding_optimizer_iterations" in w.name]
    assert len(layer) == 1 and int(layer[0].numpy()) == 2 * 2048 // 256


_WEIGHTS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    if os.environ.get("LOGICAL_CPUS"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["LOGICAL_CPUS"]))
    from memrec_tf.app import runs, sources, training
    out, strategy, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    training.train(sources.DataOptions(synthetic_preset="tiny", synthetic_rows=2048,
                                       synthetic_eval_rows=256),
                   out, epochs=1, batch_size=batch, strategy=strategy, verbose=0,
                   # SGD: Adam's normalisation would magnify the float
                   # reassociation of an all-reduce on near-zero gradients.
                   optimizer="sgd", learning_rate=0.1)
    if os.path.exists(os.path.join(out, "model.keras")):
        w = runs.load_model(out).get_weights()
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
