"""The examples run as documented."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tfrs_ranking_example_trains_and_exports(tmp_path):
    # Importing it here would fail under Keras 3; the example sets tf-keras.
    if importlib.util.find_spec("tensorflow_recommenders") is None:
        pytest.skip("tensorflow-recommenders is not installed")
    export = tmp_path / "tfrs_export"
    result = subprocess.run(
        [sys.executable, "examples/tfrs_ranking.py", "--rows", "20000", "--epochs", "2",
         "--export", str(export)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    aucs = eval(lines[0].split("by epoch", 1)[1])  # a printed list of floats
    assert aucs[-1] > aucs[0]  # the ranking model learns
    assert "max |served - model|" in lines[-1]
    assert (export / "saved_model.pb").is_file()
