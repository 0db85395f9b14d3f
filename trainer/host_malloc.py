"""glibc malloc for a CPU-only training process: freed step buffers are reused, not unmapped.

Why (measured on the 2-core machine, issue 16): XLA CPU allocates each executable's buffers with
plain `malloc` at every call and frees them after it. glibc serves a block above its mmap
threshold (at most 32 MiB) with a fresh `mmap` and returns it with `munmap`, and a thread's own
arena (XLA runs on its worker threads) cannot hold a block bigger than its 64 MiB heap at all, so
every train step maps its temporaries anew and the kernel faults in and zeroes every page on
first touch. One SST-2 fine-tune of `scripts/compare.py` (250 steps + evaluation) made 250 maps of
64-128 MiB, 7.8M page faults and 16.7 s of system time in 43 s of wall time; the default
comparison run spent 1,910 s of its 7,117 CPU seconds in the kernel (968M page faults).

With one arena (`M_ARENA_MAX=1`, so the worker threads allocate from the main heap, which can grow
past 64 MiB), no mmap for large blocks (`M_MMAP_MAX=0`) and no trimming of the heap's free top
(`M_TRIM_THRESHOLD` = 2 GiB), a freed step buffer stays in the heap and the next step reuses it:
the same fine-tune made 0.3M page faults, 4.2 s of system time, and its stage took 30.1 s instead
of 35.1 s. The cost is that the process keeps its peak heap instead of handing it back (RSS 1.68
against 1.59 GB there).

Only where it helps: glibc (Linux) and a process that will run on the CPU. A process with an
accelerator plugin installed (CUDA/ROCm `jax_plugins`, `libtpu`) and no `JAX_PLATFORMS=cpu` is left
alone: it allocates its big buffers on the device, and its input threads keep their own arenas.
Set GEMMA_ADAPT_HOST_MALLOC=0 to leave malloc alone anyway.

The arena limit applies to threads that have not yet allocated, so call `tune_for_cpu()` first in
an entry point, before TensorFlow or JAX start their threads:

  from trainer import host_malloc
  host_malloc.tune_for_cpu()   # -> True where applied

This module imports no TensorFlow or JAX.
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import platform

ENV = 'GEMMA_ADAPT_HOST_MALLOC'

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

_applied = False


def cpu_only() -> bool:
  """Whether JAX in this process will run on the CPU, decided without importing JAX."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return all(p.strip() == 'cpu' for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None:
    return False
  if importlib.util.find_spec('jax_plugins') is not None:
    return False
  return not importlib.metadata.entry_points(group='jax_plugins')


def tune_for_cpu() -> bool:
  """Applies `SETTINGS` with glibc's `mallopt` on a CPU-only process; returns whether it did."""
  global _applied
  if _applied:
    return True
  if os.environ.get(ENV, '1') == '0' or platform.libc_ver()[0] != 'glibc' or not cpu_only():
    return False
  mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
  if mallopt is None:
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success; a refused setting leaves glibc's default for it.
  _applied = all([mallopt(param, value) == 1 for param, value in SETTINGS])
  return _applied
