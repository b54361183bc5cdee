"""`memrec` never trains on something other than what was asked, never keeps
a quiet majority of bad lines, and never loses a trained model or resumes
another run's state."""
import json

import numpy as np
import pytest

from memrec_tf.app import cli

FAST = ["--batch-size", "64", "--quiet", "--compression", "2", "--epochs", "1"]


def _criteo_file(path, rows=200, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        ints = [str(int(v)) for v in rng.integers(0, 50, 13)]
        cats = [f"{int(v):08x}" for v in rng.integers(0, 40, 26)]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *ints, *cats]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _libfm_file(path, rows=200, seed=1):
    rng = np.random.default_rng(seed)
    path.write_text("".join(f"{rng.choice([-1, 1])} {rng.integers(0, 10)}:1 "
                            f"{10 + rng.integers(0, 10)}:1\n" for _ in range(rows)))
    return str(path)


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_format_is_inferred_from_the_file(tmp_path):
    train = _criteo_file(tmp_path / "x.tsv")
    out = tmp_path / "run"
    assert cli.main(["train", "--train", train, "--eval", train, "--output", str(out),
                     *FAST]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["data"]["format"] == "criteo"
    assert _metrics(out)["data"]["rows_read"] == 200  # the file, not synthetic rows
    libfm = _libfm_file(tmp_path / "frappe.txt")
    out = tmp_path / "libfm"
    assert cli.main(["train", "--train", libfm, "--libfm-fields", "2", "--output", str(out),
                     *FAST]) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["data"]["format"] == "libfm"


def test_unknown_format_or_missing_file_names_the_flag(tmp_path, capsys):
    odd = tmp_path / "odd.dat"
    odd.write_text("hello world\n")
    assert cli.main(["train", "--train", str(odd), "--output", str(tmp_path / "r")]) == 2
    assert "--format" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model-dir", str(tmp_path / "r"),
                     "--data", str(tmp_path / "missing.tsv")]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli.main(["train", "--train", str(tmp_path / "missing.tsv"),
                     "--output", str(tmp_path / "r")]) == 2
    assert "missing.tsv" in capsys.readouterr().err


def _ratings_csv(path, rows=300, seed=2):
    rng = np.random.default_rng(seed)
    lines = ["user,item,rating"] + [f"u{rng.integers(0, 30)},i{rng.integers(0, 50)},"
                                    f"{rng.integers(1, 6)}" for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_majority_of_rejected_lines_is_an_error_and_label_threshold_fixes_it(tmp_path,
                                                                              capsys):
    csv = _ratings_csv(tmp_path / "ratings.csv")
    columns = ["--columns", "label=rating,categorical=user,item"]
    assert cli.main(["train", "--train", csv, *columns, "--output", str(tmp_path / "a"),
                     *FAST]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "--label-threshold" in err and "of 300 lines" in err
    out = tmp_path / "b"
    assert cli.main(["train", "--train", csv, *columns, "--label-threshold", "4",
                     "--output", str(out), *FAST]) == 0
    assert _metrics(out)["data"]["rows_rejected"] == 0


def test_a_bad_eval_file_stops_before_training(tmp_path, capsys):
    train = _criteo_file(tmp_path / "train.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    garbage = tmp_path / "garbage.tsv"
    garbage.write_text("not\ta\tcriteo\tline\n" * 20)
    other = _libfm_file(tmp_path / "other.libfm")
    # Valid first lines, then mostly malformed ones: caught before training too.
    mostly_bad = tmp_path / "mostly_bad.tsv"
    lines = open(train).read().splitlines(True)
    mostly_bad.write_text("".join(lines[:70]) + "not\ta\tcriteo\tline\n" * 200)
    for bad in (str(empty), str(garbage), other, str(mostly_bad)):
        out = tmp_path / "run"
        code = cli.main(["train", "--format", "criteo", "--train", train, "--eval", bad,
                         "--output", str(out), *FAST])
        assert code == 2, bad
        assert bad in capsys.readouterr().err
        assert not (out / "model.keras").exists()


def test_an_evaluation_error_keeps_the_trained_model(tmp_path, capsys, monkeypatch):
    from memrec_tf.app import training

    def failing(*args, **kwargs):
        raise ValueError("the evaluation broke")

    monkeypatch.setattr(training, "_evaluate", failing)
    train = _criteo_file(tmp_path / "train.tsv")
    out = tmp_path / "run"
    assert cli.main(["train", "--train", train, "--eval", train, "--output", str(out),
                     *FAST]) == 1
    assert "the evaluation broke" in capsys.readouterr().err
    assert (out / "model.keras").exists()
    assert json.loads((out / "run.json").read_text())["state"] == "trained"


@pytest.mark.slow
def test_never_resume_or_replace_another_run(tmp_path, capsys):
    train = _criteo_file(tmp_path / "train.tsv")
    out = tmp_path / "run"
    base = ["train", "--train", train, "--output", str(out), *FAST]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "--overwrite" in err
    assert cli.main(base + ["--overwrite"]) == 0
    # An unfinished run with other settings is named, not resumed.
    run = json.loads((out / "run.json").read_text())
    run["state"] = "training"
    (out / "run.json").write_text(json.dumps(run))
    assert cli.main(base + ["--learning-rate", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "--overwrite" in err


def test_output_path_through_a_file_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["train", "--synthetic-rows", "64", "--synthetic-eval-rows", "64",
                     "--output", str(blocker / "run"), *FAST]) == 2
    assert "file" in capsys.readouterr().err


def test_messages_name_the_flag_the_user_passed(tmp_path, capsys):
    missing = str(tmp_path / "missing.tsv")
    assert cli.main(["plan", "--data", missing]) == 2
    assert f"--data {missing}: no such file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["export", "--model-dir", str(tmp_path), "--output",
                     str(blocker / "export")]) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    for command, flag in (["train", "--train"], ["plan", "--data"]):
        argv = [command, flag, str(empty), "--format", "criteo"]
        if command == "train":
            argv += ["--output", str(tmp_path / "run")]
        assert cli.main(argv) == 2
        assert f"{flag} {empty} holds no valid rows (the file is empty)" in (
            capsys.readouterr().err)


@pytest.mark.parametrize("columns", ["click,site", "label=a,label=b", "bogus=x"])
def test_bad_column_specs_exit_2(tmp_path, capsys, columns):
    csv = _ratings_csv(tmp_path / "r.csv")
    assert cli.main(["train", "--train", csv, "--columns", columns,
                     "--output", str(tmp_path / "r"), *FAST]) == 2
    assert "column spec" in capsys.readouterr().err


def test_a_truncated_gzip_file_ends_in_one_line_naming_it(tmp_path, capsys):
    import gzip

    plain = _criteo_file(tmp_path / "train.tsv", rows=3000)
    data = gzip.compress(open(plain, "rb").read())
    damaged = tmp_path / "train.tsv.gz"
    damaged.write_bytes(data[:len(data) // 2])
    assert cli.main(["train", "--format", "criteo", "--train", str(damaged),
                     "--output", str(tmp_path / "run"), *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(damaged) in err[0] and "truncated" in err[0]


@pytest.mark.slow
def test_default_training_converges_where_one_epoch_does_not(tmp_path):
    train = _criteo_file(tmp_path / "train.tsv", rows=6000, seed=3)
    # A planted signal: the label follows the first categorical column.
    lines = open(train).read().splitlines()
    rng = np.random.default_rng(4)
    planted = []
    for line in lines:
        fields = line.split("\t")
        fields[0] = str(int(int(fields[14], 16) % 2 == 0) if rng.random() < 0.9 else 1 - (
            int(fields[14], 16) % 2 == 0))
        planted.append("\t".join(fields))
    (tmp_path / "train.tsv").write_text("\n".join(planted) + "\n")
    common = ["train", "--train", train, "--eval", train, "--quiet", "--compression", "2"]
    assert cli.main(common + ["--output", str(tmp_path / "default")]) == 0
    assert cli.main(common + ["--epochs", "1", "--batch-size", "1024",
                              "--output", str(tmp_path / "one")]) == 0
    default, one = _metrics(tmp_path / "default"), _metrics(tmp_path / "one")
    assert default["epochs"] > 1
    assert default["auc"] > 0.85 > one["auc"]


def test_compression_counts_the_mapping_of_a_vocabulary_embedding(tmp_path, capsys):
    # 40 rows of 2 features with 30 values each: a mapping of 8 * (2*60 + 2)
    # bytes, past a /16 budget of (62 * 16 * 4) / 16 bytes.
    lines = [f"{i % 2} {i % 30}:1 {30 + (i * 7) % 30}:1\n" for i in range(40)]
    path = tmp_path / "train.libfm"
    path.write_text("".join(lines))
    assert cli.main(["train", "--train", str(path), "--embedding", "memrec_vocabulary_head",
                     "--output", str(tmp_path / "r"), *FAST, "--compression", "16"]) == 2
    err = capsys.readouterr().err
    assert "--embedding memrec_vocabulary_head alone takes 976" in err
    assert "pass a smaller --compression" in err
