"""Compiles the MEM-REC op library with TensorFlow's own flags.

Used by setup.py; also runnable on its own:

    python custom_ops/build.py OUTPUT.so [--cuda] [--sanitize]
    python custom_ops/build.py --cuda-object-only OBJECT.o   # CI: nvcc check

Every translation unit is compiled with `tf.sysconfig.get_compile_flags()`
(which carries TensorFlow's `_GLIBCXX_USE_CXX11_ABI` setting) and linked with
`tf.sysconfig.get_link_flags()`. Compiler output goes to a log file beside
the objects, and a failure prints its tail.

Beside the library goes `<library>.sha256`, its SHA-256 in `sha256sum`
format. memrec_tf/ops.py checks the library against it before loading, so
that a library damaged after the build is refused instead of crashing.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = ["memrec_ops.cc", "memrec_kernels.cc"]
GPU_SOURCES = ["memrec_kernels_gpu.cu.cc"]
# CUDA 13's nvcc starts at sm_75; TensorFlow 2.21's wheel is built for
# sm_60..sm_89 and compute_90. We emit SASS for Turing, Ampere, Ada and
# Hopper and PTX for Hopper so newer GPUs JIT-compile it.
CUDA_ARCHS = ["75", "80", "86", "89", "90"]
# TensorFlow's headers trigger these by the hundred; they are not ours.
QUIET = ["-Wno-deprecated-declarations", "-Wno-unused-result",
         "-Wno-ignored-attributes"]
# Appended to a library's path to name its checksum file; memrec_tf/ops.py
# reads it under the same name.
CHECKSUM_SUFFIX = ".sha256"


def _tf_flags():
    import tensorflow as tf

    compile_flags = tf.sysconfig.get_compile_flags()
    if any("_GLIBCXX_USE_CXX11_ABI=0" in f for f in compile_flags):
        raise RuntimeError(
            "this TensorFlow reports _GLIBCXX_USE_CXX11_ABI=0; memrec_tf "
            "needs a TensorFlow built with the C++11 ABI (2.21 or later)")
    return compile_flags, tf.sysconfig.get_link_flags(), tf.__version__


def _run(cmd, log_path):
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-6000:]
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- last lines of {log_path} ---\n{tail}")


def _nvcc():
    # MEMREC_NVCC picks another toolkit (e.g. a CUDA 12 nvcc to match
    # TensorFlow's CUDA 12.5 runtime).
    nvcc = os.environ.get("MEMREC_NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        raise RuntimeError("MEMREC_CUDA=1 but nvcc was not found on PATH")
    return nvcc


def checksum_path(library):
    """Path of the checksum file of the library at `library`."""
    return library + CHECKSUM_SUFFIX


def write_checksum(library):
    """Writes the SHA-256 of `library` beside it and returns that file's path.

    The line is `sha256sum`'s (`<hex digest>  <file name>`), so
    `sha256sum -c` checks it too. The file is replaced in one step: an
    interrupted write leaves no partial checksum behind.
    """
    digest = hashlib.sha256()
    with open(library, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    path = checksum_path(library)
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.write(f"{digest.hexdigest()}  {os.path.basename(library)}\n")
    os.replace(temporary, path)
    return path


def compile_cuda_object(obj, compile_flags, log_path):
    """Compiles the CUDA kernels to one object file with nvcc."""
    include = next(f[2:] for f in compile_flags if f.startswith("-I"))
    cuda_headers = os.path.join(include, "third_party", "gpus", "cuda", "include")
    if not os.path.isdir(cuda_headers):
        raise RuntimeError(
            f"CUDA headers not found at {cuda_headers}: the GPU build needs the "
            "full `tensorflow` wheel (tensorflow-cpu does not ship them)")
    gencode = []
    for arch in CUDA_ARCHS:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    gencode += ["-gencode", f"arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
    cmd = [_nvcc(), "-std=c++17", "-c", "-x", "cu", "-O3", "-DGOOGLE_CUDA=1",
           "-DNDEBUG", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
           "-diag-suppress=20012,20014,20015,611,997", "--threads", "0",
           *[f"-Xcompiler={flag}" for flag in QUIET], *gencode,
           *compile_flags, os.path.join(HERE, GPU_SOURCES[0]), "-o", obj]
    _run(cmd, log_path)


def build_library(target, cuda=False, sanitize=False, build_dir=None):
    """Builds the op library at `target` (sanitized: beside it, renamed).

    Writes its checksum file beside it (see `write_checksum`) and returns the
    library's path.
    """
    compile_flags, link_flags, tf_version = _tf_flags()
    if sanitize:
        base = os.path.basename(target).replace("_memrec_ops", "_memrec_ops_sanitized", 1)
        target = os.path.join(os.path.dirname(target), base)
    build_dir = os.path.abspath(build_dir or os.path.join(HERE, "..", "build", "ops"))
    os.makedirs(build_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    log_path = os.path.join(build_dir, "compile.log")
    open(log_path, "w").close()

    cxx = os.environ.get("CXX", "g++")
    # -fsanitize=null, nonnull-attribute and returns-nonnull-attribute turn
    # off -fdelete-null-pointer-checks, after which GCC 12 rejects Abseil's
    # `function_pointer == nullptr` in a constant expression
    # (absl/container/internal/hash_policy_traits.h). AddressSanitizer still
    # reports null dereferences.
    opt = ["-O1", "-g", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined",
           "-fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute",
           "-fno-sanitize-recover=undefined"] \
        if sanitize else ["-O3", "-DNDEBUG"]
    # The build tag is read from the file by memrec_tf/ops.py before loading,
    # so that a version mismatch is named instead of failing on a symbol.
    defines = [f'-DMEMREC_BUILD_TAG="tensorflow={tf_version};cuda={int(cuda)};'
               f'sanitized={int(sanitize)}"']
    if cuda:
        defines.append("-DGOOGLE_CUDA=1")
    objects = []
    for source in CPU_SOURCES:
        obj = os.path.join(build_dir, source + (".san" if sanitize else "") + ".o")
        _run([cxx, "-std=c++17", "-fPIC", "-c", *opt, *defines, *QUIET,
              *compile_flags, os.path.join(HERE, source), "-o", obj], log_path)
        objects.append(obj)
    if cuda:
        obj = os.path.join(build_dir, "memrec_kernels_gpu.o")
        compile_cuda_object(obj, compile_flags, log_path)
        objects.append(obj)
    san_link = ["-fsanitize=address,undefined"] if sanitize else []
    # A failed or interrupted link must not leave the previous library's
    # checksum beside whatever the linker wrote.
    if os.path.exists(checksum_path(target)):
        os.remove(checksum_path(target))
    _run([cxx, "-shared", "-o", target, *objects, *san_link, *link_flags],
         log_path)
    write_checksum(target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="library or object file to write")
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--sanitize", action="store_true")
    parser.add_argument("--cuda-object-only", action="store_true",
                        help="only compile the CUDA sources to OUTPUT (no GPU needed)")
    parser.add_argument("--build-dir", default=None,
                        help="objects and compile.log (default: build/ops)")
    args = parser.parse_args(argv)
    if args.cuda_object_only:
        compile_flags, _, _ = _tf_flags()
        build_dir = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(build_dir, exist_ok=True)
        compile_cuda_object(args.output, compile_flags,
                            os.path.join(build_dir, "nvcc.log"))
    else:
        print(build_library(args.output, cuda=args.cuda, sanitize=args.sanitize,
                            build_dir=args.build_dir))


if __name__ == "__main__":
    sys.exit(main())
