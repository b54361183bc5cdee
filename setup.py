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

Beside the library goes its checksum, `<library>.sha256`, which memrec_tf
checks before loading the library; it is installed wherever the library is.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.extension import Extension

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from custom_ops import build as op_build  # noqa: E402


class BuildOpLibrary(build_ext):
    """Compiles the op library with TensorFlow's flags instead of Python's.

    Every library travels with its checksum file: into the package directory
    for in-place and editable builds, and into the wheel.
    """

    def initialize_options(self):
        super().initialize_options()
        self._libraries = {}  # extension name -> the library build.py wrote

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        self._libraries[ext.name] = op_build.build_library(
            target,
            cuda=os.environ.get("MEMREC_CUDA") == "1",
            sanitize=os.environ.get("MEMREC_SANITIZE") == "1",
            build_dir=self.build_temp,
        )

    def copy_extensions_to_source(self):
        # Copies what build_library wrote, under its own name (the sanitized
        # build renames the library), and the checksum file beside it.
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            package = self.get_ext_fullname(ext.name).rpartition(".")[0]
            package_dir = build_py.get_package_dir(package)
            library = self._libraries[ext.name]
            for path in (library, op_build.checksum_path(library)):
                self.copy_file(path, os.path.join(package_dir, os.path.basename(path)),
                               level=self.verbose)

    def _is_library(self, path):
        return any(path.endswith(self.get_ext_filename(self.get_ext_fullname(ext.name)))
                   for ext in self.extensions)

    def get_outputs(self):
        outputs = super().get_outputs()
        return sorted(set(outputs) | {op_build.checksum_path(path) for path in outputs
                                      if self._is_library(path)})

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        mapping.update({op_build.checksum_path(built): op_build.checksum_path(inplace)
                        for built, inplace in mapping.items() if self._is_library(built)})
        return mapping


setup(
    ext_modules=[Extension("memrec_tf._memrec_ops", sources=[])],
    cmdclass={"build_ext": BuildOpLibrary},
)
