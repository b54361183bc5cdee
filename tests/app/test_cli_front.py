"""The front of `memrec` (memrec_cli): no TensorFlow to parse, no TensorFlow log lines."""
import os
import subprocess
import sys

import pytest

import memrec_cli
from memrec_tf import layers, models
from memrec_tf.app import building, sources, training
from memrec_tf.ops import quantize


def test_the_front_offers_what_memrec_tf_implements():
    assert memrec_cli.FORMATS == sources.FORMATS
    assert memrec_cli.MODELS == models.MODELS
    assert memrec_cli.EMBEDDINGS == building.EMBEDDINGS
    assert set(memrec_cli.OPTIMIZERS) == set(building.OPTIMIZERS)
    assert memrec_cli.STRATEGIES == training.STRATEGIES
    assert memrec_cli.DEFAULT_MAX_REJECTED == sources.DEFAULT_MAX_REJECTED
    assert memrec_cli.TABLE_DTYPES == quantize.TABLE_DTYPES
    assert set(layers.METHODS) <= set(memrec_cli.EMBEDDINGS)


@pytest.mark.slow
def test_help_does_not_import_tensorflow():
    code = ("import sys, memrec_cli\n"
            "try:\n    memrec_cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "--compression" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_start_up_lines_are_hidden_and_the_rest_is_kept(capfd):
    with memrec_cli.tensorflow_start_up_hidden():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1796028166.464393     533 port.cc:153] oneDNN custom "
                    b"operations are on.\n")
        os.write(2, b"E0000 00:00:1796028225.579854    1717 cuda_platform.cc:52] failed call "
                    b"to cuInit: INTERNAL\n")
        os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, "
                    b"rebuild TensorFlow with the appropriate compiler flags.\n")
        os.write(2, b"Traceback: something the user must see\n")
        os.write(2, b"a Python warning\n")
    err = capfd.readouterr().err
    assert err == "Traceback: something the user must see\na Python warning\n"


def test_an_exception_inside_still_restores_stderr(capfd):
    with pytest.raises(RuntimeError):
        with memrec_cli.tensorflow_start_up_hidden():
            os.write(2, b"kept line\n")
            raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept line\nafter\n"


@pytest.mark.slow
def test_a_command_prints_no_tensorflow_log_line():
    out = subprocess.run([sys.executable, "-m", "memrec_cli", "plan", "--cardinalities",
                          "1000,50", "--compression", "4"], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items()
                                           if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert out.returncode == 0, out.stderr
    assert "recommended:" in out.stdout
    assert out.stderr == ""
