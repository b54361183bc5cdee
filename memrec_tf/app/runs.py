"""A run's folder: the model, the run file, the metrics and the backup of an
interrupted run, each written so that a kill at any moment leaves the last
complete version readable.

    OUTPUT/model.keras     the trained model (written before evaluation)
    OUTPUT/run.json        the settings, the feature spec and the run's state
    OUTPUT/metrics.json    evaluation and bytes
    OUTPUT/backup/         epoch checkpoints of an unfinished run
"""
import json
import os
import re
import shutil

import tensorflow as tf

from memrec_tf.app.errors import UsageError

keras = tf.keras

MODEL_FILE = "model.keras"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
BACKUP_DIR = "backup"
# A run file's "state": training until the model is written, then trained.
TRAINING, TRAINED = "training", "trained"
_CHECKPOINT = re.compile(r"^epoch-(\d+)\.weights\.h5$")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(write, path, suffix=""):
    """Calls `write(tmp_path)`, flushes the file to disk and renames it to `path`.

    A kill at any moment leaves either the old `path` or the new one, whole.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)
    replace_atomically(write, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def is_chief():
    """True on the worker that writes the run's files (every single-machine run)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0)


def differing_settings(old, new):
    """Names (dotted) of the settings whose values differ between two run files."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names.extend(f"{key}.{name}" for name in differing_settings(a, b))
        elif a != b:
            names.append(key)
    return names


def check_output_folder(output, flag):
    """A UsageError naming `flag` when a folder above `output` is a file."""
    parent = os.path.dirname(os.path.abspath(output))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UsageError(f"{flag} {output}: {parent} is a file, not a folder")


def prepare_output(output, settings, overwrite=False):
    """Makes `output` ready for a run of `settings`; returns True when resuming.

    A folder with an unfinished run of the same settings is resumed; one with
    other settings, or with a finished run, is refused unless `overwrite`,
    which clears it first.

    Raises:
      UsageError: the folder cannot be used, naming the differing settings.
    """
    if os.path.exists(output) and not os.path.isdir(output):
        if not overwrite:
            raise UsageError(f"--output {output} is a file, not a folder (pass --overwrite "
                             "to replace it)")
        os.remove(output)
    run_path = os.path.join(output, RUN_FILE)
    if overwrite and os.path.isdir(output):
        for name in (MODEL_FILE, RUN_FILE, METRICS_FILE):
            if os.path.exists(os.path.join(output, name)):
                os.remove(os.path.join(output, name))
        shutil.rmtree(os.path.join(output, BACKUP_DIR), ignore_errors=True)
    try:
        os.makedirs(output, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise UsageError(f"--output {output}: a part of the path is a file ({e})") from e
    if not os.path.exists(run_path):
        if os.path.exists(os.path.join(output, MODEL_FILE)):
            raise UsageError(f"--output {output} holds a model without a run file; pass "
                             "--overwrite to replace it, or choose another folder")
        return False
    try:
        old = read_json(run_path)
    except (OSError, ValueError) as e:
        raise UsageError(f"{run_path} cannot be read ({e}); pass --overwrite to start "
                         "afresh") from e
    if old.get("state") == TRAINED:
        raise UsageError(f"--output {output} holds a finished run; pass --overwrite to "
                         "replace it, or choose another folder")
    differ = differing_settings(old.get("settings", {}), settings)
    if differ:
        raise UsageError(f"--output {output} holds an unfinished run with other settings "
                         f"({', '.join(differ)}); rerun with the same settings to resume "
                         "it, or pass --overwrite to start afresh")
    return True


def load_model(model_dir):
    """The model saved by `memrec train` in `model_dir`."""
    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"no trained model in {model_dir} (expected {path})")
    return keras.models.load_model(path)


def table_dtype(model_dir):
    """The format a run's MEM-REC token tables are served in (its --table-dtype)."""
    try:
        run = read_json(os.path.join(model_dir, RUN_FILE))
    except (OSError, ValueError):
        return "float32"
    return run.get("settings", {}).get("table_dtype", "float32")


def save_model(model, model_dir):
    """Writes the model atomically: a kill leaves the previous file or the new one."""
    replace_atomically(model.save, os.path.join(model_dir, MODEL_FILE), suffix=".keras")


class EpochBackup(keras.callbacks.Callback):
    """Backs up the training state after every epoch; restores it on a rerun.

    Each epoch's weights (optimizer included) go to a new file, flushed and
    renamed to `epoch-N.weights.h5` (N epochs done); the older file is
    deleted only after that. A kill at any moment leaves the last complete
    epoch readable, and the next `fit` resumes from it.
    """

    def __init__(self, backup_dir):
        super().__init__()
        self.backup_dir = backup_dir
        self.epochs_done = 0  # by this run, an interrupted one's included

    def _checkpoints(self):
        if not os.path.isdir(self.backup_dir):
            return []
        found = [(int(m.group(1)), os.path.join(self.backup_dir, name))
                 for name in os.listdir(self.backup_dir)
                 if (m := _CHECKPOINT.match(name))]
        return sorted(found)

    def on_train_begin(self, logs=None):
        found = self._checkpoints()
        if not found:
            return
        epoch, path = found[-1]
        self.epochs_done = epoch
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)
        self.model._initial_epoch = epoch  # pylint: disable=protected-access

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_done = epoch + 1
        os.makedirs(self.backup_dir, exist_ok=True)
        older = self._checkpoints()
        path = os.path.join(self.backup_dir, f"epoch-{epoch + 1:05d}.weights.h5")
        replace_atomically(self.model.save_weights, path, suffix=".weights.h5")
        for _, old in older:
            if old != path:
                os.remove(old)


def remove_backup(output):
    """Deletes the backup of a run whose model and run file are written."""
    shutil.rmtree(os.path.join(output, BACKUP_DIR), ignore_errors=True)
