"""Checks of the CUDA build and of the GPU check script that need no GPU.

- The CUDA object compiles with nvcc through custom_ops/build.py (slow: 3-10
  minutes on two shared cores; skipped without nvcc, and reusing the object
  of `make cuda-object` when that is newer than the sources).
- tests/gpu/check_kernels.py --self-test passes without CuPy, and its numpy
  reference (which the GPU check trusts) agrees with the CPU op through
  TensorFlow: hash rows exactly, forward and both gradients to rounding.
- The kernels of custom_ops/memrec_kernels_gpu.cuh run on the CPU under a
  small CUDA emulator (below: every block's threads are fibers, with real
  warp barriers and shuffles), driven by check_kernels.py itself through a
  stand-in for CuPy, so the whole GPU check is exercised here: kernel logic,
  host drivers, argument types and sizes, grid-stride loops (grids capped at
  3 blocks), and NaN-poisoned outputs. What the emulator cannot show - speed,
  the memory model, real NVRTC - is left to the GPU run.
"""
import ctypes
import ctypes.util
import hashlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

# Two folders up: tests/ops/ -> the repository.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK_SCRIPT = os.path.join(REPO, "tests", "gpu", "check_kernels.py")
CUSTOM_OPS = os.path.join(REPO, "custom_ops")


def _load_check_module():
    spec = importlib.util.spec_from_file_location("memrec_check_kernels", CHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ck = _load_check_module()


# ------------------------------------------------------------ CUDA object

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_object_compiles(tmp_path):
    pytest.importorskip("tensorflow")
    # `make test` compiles this object first (target cuda-object): when it is
    # newer than every source under custom_ops/, that compile succeeded on
    # these sources and is not repeated (it takes minutes on two cores).
    made = os.path.join(REPO, "build", "cuda", "memrec_kernels_gpu.o")
    sources = [os.path.join(CUSTOM_OPS, f) for f in os.listdir(CUSTOM_OPS)
               if f.endswith((".h", ".cuh", ".cc", ".py"))]
    if os.path.exists(made) and os.path.getsize(made) > 0 and \
            os.path.getmtime(made) > max(os.path.getmtime(f) for f in sources):
        return
    obj = tmp_path / "k.o"
    proc = subprocess.run(
        [sys.executable, os.path.join(CUSTOM_OPS, "build.py"), "--cuda-object-only",
         str(obj)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert obj.stat().st_size > 0


# ---------------------------------------------------------------- self-test

def test_self_test_runs_without_cupy():
    env = dict(os.environ, PYTHONPATH="")
    code = ("import sys, runpy; sys.modules['cupy'] = None; "
            f"sys.argv = [{CHECK_SCRIPT!r}, '--self-test', '--seed', '5']; "
            f"runpy.run_path({CHECK_SCRIPT!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0 and "differs from pinned vectors" in proc.stderr:
        # Everything else passed (the pinned vectors are checked last).
        _pinned_contract_broken(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test passed" in proc.stdout


def _pinned_contract_broken(detail):
    """custom_ops/memrec_math.h no longer reproduces the pinned vectors of
    tests/ops/test_hash_vectors.py. That test fails for it; here it is an xfail,
    so that the checks of this file still report on their own."""
    pytest.xfail("the hash of memrec_math.h differs from the pinned vectors "
                 "(see tests/ops/test_hash_vectors.py):\n" + detail[-2000:])


def test_signature_layout_matches_the_c_struct(tmp_path):
    """The numpy record the GPU check uploads has memrec::Signature's layout."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "layout.cc"
    fields = [f[0] for f in ck._SIGNATURE_FIELDS]
    src.write_text(
        '#include <cstddef>\n#include <cstdio>\n#include "memrec_math.h"\n'
        "int main() {\n"
        '  std::printf("size %zu\\n", sizeof(memrec::Signature));\n' +
        "".join(f'  std::printf("{name} %zu\\n", offsetof(memrec::Signature, {name}));\n'
                for name in fields) + "}\n")
    exe = tmp_path / "layout"
    subprocess.run([cxx, "-std=c++17", "-I", CUSTOM_OPS, str(src), "-o", str(exe)],
                   check=True, timeout=120)
    out = dict(line.split() for line in subprocess.run(
        [str(exe)], capture_output=True, text=True, check=True).stdout.splitlines())
    assert int(out["size"]) == ck.SIGNATURE_DTYPE.itemsize == ck.SIGNATURE_BYTES
    for name in fields:
        assert int(out[name]) == ck.SIGNATURE_DTYPE.fields[name][1], name


# -------------------------------------- numpy reference vs the TF CPU op

def _tf():
    tf = pytest.importorskip("tensorflow")
    from memrec_tf import ops
    ok, why = ops.is_available()
    if not ok:
        pytest.skip(why)
    return tf, ops


def _tf_signature(sig):
    from memrec_tf.ops import signature as sig_lib
    return sig_lib.Signature(num_hashes=sig.num_hashes,
                             num_weight_hashes=sig.num_weight_hashes, seed=sig.seed,
                             num_salts=sig.num_salts, vocab_size=sig.vocab_size,
                             num_head=sig.num_head)


def test_reference_hash_matches_cpu_op():
    tf, ops = _tf()
    rng = np.random.default_rng(1)
    # Table sizes on both sides of HashRow's 2^32-row switch.
    for vocab in (False, True):
        for _ in range(5):
            big = rng.random() < 0.4
            sig = ck.random_signature(rng, int(rng.integers(2**32, 2**45)) if big else
                                      int(rng.integers(20, 5000)),
                                      int(rng.integers(16, 300)), vocab=vocab,
                                      k=int(rng.integers(1, 17)), kw=int(rng.integers(0, 17)))
            ids = ck.random_ids(rng, 500, sig, zipf=1.2 if rng.random() < 0.3 else None)
            token, weight = ops.hash_rows(tf.constant(ids), _tf_signature(sig),
                                          sig.num_token_rows, sig.num_weight_rows)
            want_token, want_weight = ck.hash_rows(ids, sig)
            np.testing.assert_array_equal(token.numpy(), want_token)
            np.testing.assert_array_equal(weight.numpy(), want_weight)


@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("per_hash", [False, True])
def test_reference_matches_cpu_op(combiner, per_hash):
    tf, ops = _tf()
    rng = np.random.default_rng(abs(hash((combiner, per_hash))) % 2**32)
    for with_weights in (False, True):
        for vocab in (False, True):
            sig = ck.random_signature(rng, 700, 50, vocab=vocab)
            width = sig.num_hashes if per_hash else 1
            if combiner == "none":
                splits = np.zeros(0, np.int64)
                n = 300
            else:
                splits = ck.random_splits(rng, 400, 25)
                n = int(splits[-1])
            ids = ck.random_ids(rng, n, sig, zipf=1.2)
            weights = ck.random_weights(rng, n) if with_weights else None
            d = 6
            table = rng.normal(size=(sig.num_token_rows, d))
            wtable = rng.normal(size=(sig.num_weight_rows, width))
            mode = "per_hash" if per_hash else "scalar"
            tf_weights = tf.constant(weights if weights is not None else np.zeros(0),
                                     tf.float64)
            args = (tf.constant(ids), tf.constant(splits), tf_weights,
                    tf.constant(table), tf.constant(wtable))
            out = ops.lookup(*args, _tf_signature(sig), combiner=combiner,
                             weight_mode=mode).numpy()
            ref = ck.lookup(ids, splits, weights, table, wtable, sig, combiner, per_hash)
            np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)
            grad = rng.normal(size=ref.shape)
            got = ops.load_library().mem_rec_lookup_grad(
                tf.constant(grad), *args, combiner=combiner, weight_mode=mode,
                **_tf_signature(sig).op_attrs())
            want = ck.lookup_grad(grad, ids, splits, weights, table, wtable, sig, combiner,
                                  per_hash)
            np.testing.assert_array_equal(got[0].numpy(), want[0])
            np.testing.assert_allclose(got[1].numpy(), want[1], rtol=1e-10, atol=1e-10)
            np.testing.assert_array_equal(got[2].numpy(), want[2])
            np.testing.assert_allclose(got[3].numpy(), want[3], rtol=1e-10, atol=1e-10)


# ------------------------------------------------- NVRTC, as CuPy uses it

def _nvrtc_library():
    """libnvrtc: $MEMREC_NVRTC_LIBRARY, the system's, or the nvidia wheel's."""
    import ctypes.util
    path = os.environ.get("MEMREC_NVRTC_LIBRARY")
    if path:
        return path
    found = ctypes.util.find_library("nvrtc")
    if found:
        return found
    try:
        import nvidia.cuda_nvrtc
        for root in nvidia.cuda_nvrtc.__path__:
            lib = os.path.join(root, "lib")
            for name in sorted(os.listdir(lib)) if os.path.isdir(lib) else []:
                if re.fullmatch(r"libnvrtc\.so\.\d+", name):
                    return os.path.join(lib, name)
    except ImportError:
        pass
    return None


def _nvrtc_compile(library, source, options, names):
    """PTX for compute_90 (no GPU needed) and the lowered names, or raises."""
    lib = ctypes.CDLL(library)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    prog = ctypes.c_void_p()

    def check(status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"check.cu", 0,
                                 None, None), "nvrtcCreateProgram")
    for name in names:
        check(lib.nvrtcAddNameExpression(prog, name.encode()), name)
    opts = [o.encode() for o in [*options, "--gpu-architecture=compute_90"]]
    status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if status != 0:
        raise RuntimeError("NVRTC compile failed:\n" + log.value.decode(errors="replace"))
    lowered = {}
    for name in names:
        out = ctypes.c_char_p()
        check(lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(out)), name)
        lowered[name] = out.value.decode()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode(), lowered


@pytest.mark.parametrize("dtype", list(ck.DTYPES))
def test_nvrtc_compiles_the_check_module(dtype, monkeypatch):
    """The very source and options that check_kernels.py hands to CuPy."""
    library = _nvrtc_library()
    if library is None:
        pytest.skip("no NVRTC library (set MEMREC_NVRTC_LIBRARY)")
    if dtype in ("float16", "bfloat16"):
        cuda = _cuda_headers()
        if cuda is None:
            pytest.skip("no CUDA headers for cuda_fp16.h")
        monkeypatch.setenv("CUDA_PATH", cuda)
    source, options, names = ck.module_source(dtype)
    ptx, lowered = _nvrtc_compile(library, source, options, list(set(names.values())))
    for name, symbol in lowered.items():
        assert f".entry {symbol}(" in ptx, name


# ------------------------------------------------ kernels on a CPU emulator

# Just enough of CUDA for memrec_kernels_gpu.cuh, on the host: the threads of
# a block are fibers run by one scheduler, so __syncthreads,
# __syncwarp and __shfl_xor_sync are real barriers among exactly the threads
# that CUDA would synchronise (a thread that has returned leaves them). Blocks
# run one after another, so a `static` variable is the block's shared memory.
EMULATOR = r"""
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

// Fiber switch (x86-64 System V): saves the callee-saved registers on the
// current stack, stores its pointer in *save and continues on `next`.
extern "C" void emu_switch(void** save, void* next);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch,.-emu_switch
)");

struct EmuDim3 { unsigned x = 1, y = 1, z = 1; };

namespace emu {
constexpr std::size_t kStackBytes = 256 * 1024;
struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  EmuDim3 thread;
  int state = 0;  // 0 runnable, 1 waiting at a barrier, 2 done
};
inline std::vector<Fiber> fibers;
inline std::vector<char> stacks;
inline Fiber* current = nullptr;
inline void* scheduler_sp = nullptr;
inline EmuDim3 block_index, block_dim, grid_dim;
inline std::vector<int> warp_arrived, warp_alive;
inline int block_arrived = 0, block_alive = 0;
inline std::vector<unsigned long long> shuffle;
inline std::vector<unsigned char> dynamic_shared;
inline void (*body)(void*) = nullptr;
inline void* body_arg = nullptr;
inline const char* failure = nullptr;

inline void Release(int warp) {  // wakes the lanes of one warp, or all (-1)
  for (Fiber& f : fibers) {
    if (f.state == 1 && (warp < 0 || static_cast<int>(f.thread.x / 32) == warp)) {
      f.state = 0;
    }
  }
}
inline void Wait() {
  current->state = 1;
  emu_switch(&current->sp, scheduler_sp);
}
inline void WarpBarrier() {
  const int w = current->thread.x / 32;
  if (block_arrived != 0) failure = "__syncwarp while a __syncthreads is pending";
  if (++warp_arrived[w] == warp_alive[w]) {
    warp_arrived[w] = 0;
    Release(w);
  } else {
    Wait();
  }
}
inline void BlockBarrier() {
  for (int a : warp_arrived) if (a != 0) failure = "__syncthreads while a __syncwarp is pending";
  if (++block_arrived == block_alive) {
    block_arrived = 0;
    Release(-1);
  } else {
    Wait();
  }
}
inline void FiberMain() {
  body(body_arg);
  Fiber* f = current;
  f->state = 2;
  const int w = f->thread.x / 32;
  --warp_alive[w];
  --block_alive;
  if (warp_arrived[w] > 0 && warp_arrived[w] == warp_alive[w]) {
    warp_arrived[w] = 0;
    Release(w);
  }
  if (block_arrived > 0 && block_arrived == block_alive) {
    block_arrived = 0;
    Release(-1);
  }
  emu_switch(&f->sp, scheduler_sp);  // never resumed
  std::abort();
}

// Runs body(arg) on grid x block threads. Returns nullptr or an error.
inline const char* Run(unsigned grid, unsigned block, std::size_t shared,
                       void (*fn)(void*), void* arg) {
  if (grid == 0 || block == 0 || block > 1024) return "bad launch shape";
  if (shared > 48 * 1024) return "too much dynamic shared memory";
  failure = nullptr;
  body = fn;
  body_arg = arg;
  grid_dim = EmuDim3{grid, 1, 1};
  block_dim = EmuDim3{block, 1, 1};
  if (stacks.size() < block * kStackBytes) stacks.resize(block * kStackBytes);
  for (unsigned b = 0; b < grid && failure == nullptr; ++b) {
    block_index = EmuDim3{b, 1, 1};
    dynamic_shared.assign(shared + 16, 0xA5);  // garbage, as on a GPU
    fibers.assign(block, Fiber{});
    const unsigned warps = (block + 31) / 32;
    warp_arrived.assign(warps, 0);
    warp_alive.assign(warps, 32);
    if (block % 32 != 0) warp_alive[warps - 1] = static_cast<int>(block % 32);
    shuffle.assign(block, 0);
    block_arrived = 0;
    block_alive = static_cast<int>(block);
    for (unsigned t = 0; t < block; ++t) {
      Fiber& f = fibers[t];
      f.thread = EmuDim3{t, 1, 1};
      // A new stack that "returns" into FiberMain with the ABI's alignment.
      std::uintptr_t top = reinterpret_cast<std::uintptr_t>(
          stacks.data() + (t + 1) * kStackBytes) & ~std::uintptr_t{15};
      std::uintptr_t* sp = reinterpret_cast<std::uintptr_t*>(top);
      *--sp = 0;
      *--sp = reinterpret_cast<std::uintptr_t>(&FiberMain);
      for (int r = 0; r < 6; ++r) *--sp = 0;
      f.sp = sp;
    }
    for (;;) {
      bool ran = false, alive = false;
      for (Fiber& f : fibers) {
        if (f.state != 2) alive = true;
        if (f.state != 0) continue;
        current = &f;
        ran = true;
        emu_switch(&scheduler_sp, f.sp);
      }
      if (!alive) break;
      if (!ran) return "deadlock: threads wait at a barrier that cannot complete";
    }
  }
  return failure;
}

template <typename... P>
struct Call {
  void (*kernel)(P...);
  std::tuple<P...> args;
  static void Invoke(void* self) {
    Call* c = static_cast<Call*>(self);
    std::apply(c->kernel, c->args);
  }
};

template <typename... P, std::size_t... I>
std::tuple<P...> Unpack(void** args, std::index_sequence<I...>) {
  std::tuple<P...> values;
  ((std::memcpy(&std::get<I>(values), args[I], sizeof(P))), ...);
  return values;
}

// Launch with arguments packed as CuPy packs them: one buffer per argument,
// whose size must be the parameter's.
template <typename... P>
const char* Launch(void (*kernel)(P...), unsigned grid, unsigned block,
                   std::size_t shared, void** args, const std::size_t* sizes,
                   int count) {
  static char message[256];
  if (count != static_cast<int>(sizeof...(P))) {
    std::snprintf(message, sizeof(message), "kernel takes %d arguments, got %d",
                  static_cast<int>(sizeof...(P)), count);
    return message;
  }
  const std::size_t want[] = {sizeof(P)...};
  for (int i = 0; i < count; ++i) {
    if (want[i] != sizes[i]) {
      std::snprintf(message, sizeof(message),
                    "argument %d has %zu bytes, the kernel's parameter %zu", i,
                    sizes[i], want[i]);
      return message;
    }
  }
  Call<P...> call{kernel, Unpack<P...>(args, std::index_sequence_for<P...>{})};
  return Run(grid, block, shared, &Call<P...>::Invoke, &call);
}
}  // namespace emu

"""

# CUDA's keywords, defined right before the kernels are included (after any
# CUDA header of the prelude, whose host_defines.h has its own meanings).
EMU_KEYWORDS = r"""
#undef __host__
#undef __device__
#undef __global__
#undef __forceinline__
#undef __restrict__
#undef __shared__
#undef __align__
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) alignas(n)
#define threadIdx (emu::current->thread)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
inline void __syncthreads() { emu::BlockBarrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::WarpBarrier(); }
template <typename V>
inline V __shfl_xor_sync(unsigned, V value, int offset) {
  static_assert(sizeof(V) <= 8, "shuffle of up to 8 bytes");
  const unsigned t = threadIdx.x;
  std::memcpy(&emu::shuffle[t], &value, sizeof(V));
  emu::WarpBarrier();
  V out;
  std::memcpy(&out, &emu::shuffle[(t & ~31u) | ((t % 32) ^ offset)], sizeof(V));
  emu::WarpBarrier();
  return out;
}
"""

_EXTERN_SHARED = "extern __shared__ __align__(16) unsigned char stage_memory[];"
_EMU_SHARED = ("unsigned char* stage_memory = reinterpret_cast<unsigned char*>("
               "(reinterpret_cast<std::uintptr_t>(emu::dynamic_shared.data()) + 15) & "
               "~std::uintptr_t{15});")


class _EmulatedKernel:
    def __init__(self, library, index, name):
        self._fn = getattr(library, f"emu_launch_{index}")
        self._fn.restype = ctypes.c_char_p
        self._fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t,
                             ctypes.POINTER(ctypes.c_void_p),
                             ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]
        self.name = name
        self.launches = 0

    def __call__(self, grid, block, args, shared_mem=0):
        holders, pointers, sizes = [], [], []
        for arg in args:
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous, self.name
                holder = ctypes.c_uint64(arg.ctypes.data if arg.size else 0)
                size = 8
            elif isinstance(arg, np.generic):
                holder = ctypes.create_string_buffer(arg.tobytes(), arg.nbytes)
                size = arg.nbytes
            else:  # CuPy would guess a type for a Python scalar: not allowed here
                raise TypeError(f"{self.name}: pass numpy scalars, not {type(arg)}")
            holders.append(holder)
            pointers.append(ctypes.cast(ctypes.pointer(holder), ctypes.c_void_p))
            sizes.append(size)
        (blocks,), (threads,) = grid, block
        # Grid-stride loops make any grid correct: 3 blocks keep it quick and
        # make every loop take several rounds.
        error = self._fn(min(int(blocks), 3), int(threads), int(shared_mem),
                         (ctypes.c_void_p * len(pointers))(*pointers),
                         (ctypes.c_size_t * len(sizes))(*sizes), len(pointers))
        self.launches += 1
        if error:
            raise RuntimeError(f"{self.name}: {error.decode()}")


class _EmulatedModule:
    cache = {}

    def __init__(self, code, options, name_expressions, build_dir):
        includes = [o for o in options if o.startswith("-I")]
        assert _EXTERN_SHARED in open(os.path.join(CUSTOM_OPS, ck.KERNEL_HEADER)).read()
        names = list(name_expressions)
        entries = "".join(
            f'extern "C" const char* emu_launch_{i}(unsigned g, unsigned b, std::size_t s, '
            f"void** a, const std::size_t* z, int n) {{ return emu::Launch(&({name}), g, b, "
            f"s, a, z, n); }}\n" for i, name in enumerate(names))
        key = hashlib.sha256((code + repr(options) + repr(names) + EMULATOR)
                             .encode()).hexdigest()[:16]
        if key not in self.cache:
            work = os.path.join(build_dir, key)
            os.makedirs(work, exist_ok=True)
            with open(os.path.join(CUSTOM_OPS, ck.KERNEL_HEADER)) as f:
                header = f.read().replace(_EXTERN_SHARED, _EMU_SHARED)
            with open(os.path.join(work, ck.KERNEL_HEADER), "w") as f:
                f.write(header)
            src = os.path.join(work, "emulated.cc")
            include = f'#include "{ck.KERNEL_HEADER}"'
            assert include in code
            with open(src, "w") as f:
                f.write(EMULATOR + code.replace(include, EMU_KEYWORDS + include) + entries)
            lib = os.path.join(work, "emulated.so")
            cxx = shutil.which(os.environ.get("CXX", "g++"))
            # The copied header first, so that it shadows custom_ops/'s.
            proc = subprocess.run(
                [cxx, "-std=c++20", "-O2", "-g", "-shared", "-fPIC", "-w", "-I", work,
                 *includes, src, "-o", lib], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError("emulated build failed:\n" + proc.stderr[-6000:])
            self.cache[key] = ctypes.CDLL(lib)
        library = self.cache[key]
        self._kernels = {name: _EmulatedKernel(library, i, name)
                         for i, name in enumerate(names)}

    def get_function(self, name):
        return self._kernels[name]


def _fake_cupy(build_dir):
    """A module with the parts of CuPy that check_kernels.py uses, on numpy."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "cpu-emulator"
    cp.asarray = lambda a, dtype=None: np.array(a, dtype=dtype, copy=True)
    cp.asnumpy = lambda a: np.array(a, copy=True)
    for name in ("full", "empty", "zeros", "empty_like", "stack", "lexsort", "cumsum"):
        setattr(cp, name, getattr(np, name))
    cp.RawModule = lambda code, options, name_expressions: _EmulatedModule(
        code, options, name_expressions, build_dir)
    device = types.SimpleNamespace(id=0, synchronize=lambda: None)
    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda i: {"name": b"CPU emulator"},
        runtimeGetVersion=lambda: 0)
    cp.cuda = types.SimpleNamespace(
        Device=lambda *a: device, runtime=runtime,
        nvrtc=types.SimpleNamespace(getVersion=lambda: (0, 0)),
        get_cuda_path=lambda: os.environ.get("CUDA_PATH", "/usr/local/cuda"))
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    return cp


def _cuda_headers():
    """CUDA headers for __half / __nv_bfloat16 on the host, or None."""
    candidates = [os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = subprocess.run(["sh", "-c", f"grep -o '/[^ ]*/bin/nvcc' {nvcc} || true"],
                              capture_output=True, text=True).stdout.strip()
        candidates.append(os.path.dirname(os.path.dirname(real or os.path.realpath(nvcc))))
    for base in candidates:
        if base and os.path.exists(os.path.join(base, "include", "cuda_fp16.h")):
            return base
    return None


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the emulator's fiber switch is x86-64 assembly")
def test_kernels_on_cpu_emulator(monkeypatch, capsys, tmp_path):
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler")
    cuda = _cuda_headers()
    dtypes = ["float32", "float64"] + (["float16", "bfloat16"] if cuda else [])
    if cuda:
        monkeypatch.setenv("CUDA_PATH", cuda)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(str(tmp_path)))
    status = ck.main(["--no-benchmark", "--seed", "12345", "--dtypes", *dtypes])
    out = capsys.readouterr().out
    print(out[-4000:])
    assert re.search(r"correctness: \d+ passed", out), out[-6000:]
    others = [name for name in ck.LAST_FAILURES if "pinned" not in name]
    assert not others, out[-6000:]
    if ck.LAST_FAILURES:  # only the pinned vectors: a changed hash, not the kernels
        _pinned_contract_broken("\n".join(ck.LAST_FAILURES))
    assert status == 0, out[-6000:]
    assert re.search(r"all \d+ checks passed", out)
