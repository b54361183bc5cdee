"""Builds memrec_tf and its op library.

The op library (memrec_tf/_memrec_ops.so) is compiled from custom_ops/ with
g++ and TensorFlow's own compile and link flags, so TensorFlow must be
installed first and the package installed without build isolation:

    pip install tensorflow==2.21.0
    pip install --no-build-isolation -e .

Environment variables:
    MEMREC_CUDA=1      also compile the CUDA kernels with nvcc (needs the full
                       `tensorflow` wheel, whose headers include CUDA's).
    MEMREC_SANITIZE=1  build with AddressSanitizer and UndefinedBehavior-
                       Sanitizer into memrec_tf/_memrec_ops_sanitized.so.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.extension import Extension

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from custom_ops import build as op_build  # noqa: E402


class BuildOpLibrary(build_ext):
    """Compiles the op library with TensorFlow's flags instead of Python's."""

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        op_build.build_library(
            target,
            cuda=os.environ.get("MEMREC_CUDA") == "1",
            sanitize=os.environ.get("MEMREC_SANITIZE") == "1",
            build_dir=self.build_temp,
        )


setup(
    ext_modules=[Extension("memrec_tf._memrec_ops", sources=[])],
    cmdclass={"build_ext": BuildOpLibrary},
)
