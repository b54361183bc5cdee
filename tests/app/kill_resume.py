"""Kills `memrec train` with SIGKILL while it writes its epoch backup, again and
again, and checks that the same command resumes every time and finally
finishes.

    python tests/app/kill_resume.py [--kills 20] [--workdir DIR]

Each round starts the command, waits until it is writing a backup file (the
temporary file of `memrec_tf.app.runs.replace_atomically`), kills it at a
random moment of that write, and checks that the newest complete backup is
readable. The next round is the resume of the killed one: it must get back
to writing. Exits 1 on the first failure, naming the round. Run by .ci/run.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

EPOCHS = 30
COMMAND = [sys.executable, "-m", "memrec_cli", "train", "--synthetic-preset", "tiny",
           "--synthetic-rows", "2048", "--synthetic-eval-rows", "512", "--batch-size", "1024",
           "--num-token-rows", "500000", "--epochs", str(EPOCHS), "--quiet"]


def _backups(backup_dir):
    try:
        names = os.listdir(backup_dir)
    except FileNotFoundError:
        return [], []
    done = sorted(n for n in names if n.startswith("epoch-") and n.endswith(".weights.h5"))
    writing = [n for n in names if n.startswith(".epoch-")]
    return done, writing


def _readable(path):
    import h5py  # pylint: disable=g-import-not-at-top

    with h5py.File(path, "r") as f:
        f.visit(lambda name: None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workdir")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per round")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="memrec-kill-")
    output = os.path.join(workdir, "run")
    backup_dir = os.path.join(output, "backup")
    shutil.rmtree(output, ignore_errors=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = COMMAND + ["--output", output]
    rng = random.Random(0)
    for round_ in range(1, args.kills + 1):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        start = time.monotonic()
        while not _backups(backup_dir)[1]:
            if process.poll() is not None:
                print(f"round {round_}: the command exited with {process.returncode} before "
                      f"writing a backup: {process.stderr.read().decode()[-2000:]}")
                return 1
            if time.monotonic() - start > args.timeout:
                process.kill()
                print(f"round {round_}: no backup write within {args.timeout} s")
                return 1
            time.sleep(0.002)
        # Most kills land inside the write; some just after it, in the next epoch.
        time.sleep(rng.uniform(0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        done, _ = _backups(backup_dir)
        if done:
            try:
                _readable(os.path.join(backup_dir, done[-1]))
            except Exception as e:  # pylint: disable=broad-except
                print(f"round {round_}: the newest backup {done[-1]} is unreadable: {e}")
                return 1
        print(f"round {round_}: killed while writing; newest complete backup: "
              f"{done[-1] if done else 'none'}", flush=True)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        print(f"the final resume failed ({finished.returncode}): {finished.stderr[-2000:]}")
        return 1
    print(f"{args.kills} kills during backup writes; every rerun resumed and the last finished")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
