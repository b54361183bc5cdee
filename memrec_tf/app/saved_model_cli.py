"""TensorFlow's saved_model_cli with the memrec_tf ops registered.

    python -m memrec_tf.app.saved_model_cli show --dir EXPORT --all
    python -m memrec_tf.app.saved_model_cli run --dir EXPORT --tag_set serve \\
        --signature_def serving_default --input_exprs 'ids=[[1, 2, 3, 4]]'

The arguments are those of `saved_model_cli` (this module runs its main()).
The stock tool has no flag for op libraries, so it cannot run a
mode='fused' export; this wrapper loads the memrec_tf op library first. If
the library cannot be loaded it says why on stderr and carries on (core
exports need no library); a fused export then fails with a message that
names the fix.
"""
import sys

from memrec_tf import saved_model as export_lib
from memrec_tf import ops

PROG = "saved_model_cli"


def _dir_argument(argv):
    for i, arg in enumerate(argv):
        if arg == "--dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--dir="):
            return arg.split("=", 1)[1]
    return None


def main(argv=None):
    """Runs saved_model_cli with `argv` (default: this process's arguments).

    Returns:
      The exit status (saved_model_cli itself exits through SystemExit).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    available, reason = ops.is_available()
    if not available:
        print(f"memrec_tf: the op library did not load, mode='fused' exports will "
              f"not run: {reason}", file=sys.stderr)
    library_error = None if available else reason

    # saved_model_cli parses sys.argv itself (absl's app.run, then argparse).
    from tensorflow.python.tools import saved_model_cli  # pylint: disable=g-import-not-at-top

    sys.argv = [PROG] + argv
    try:
        saved_model_cli.main()
    except Exception as e:  # pylint: disable=broad-except
        message = export_lib.explain_load_error(e, _dir_argument(argv), library_error)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
