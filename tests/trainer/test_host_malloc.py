"""`trainer.host_malloc`: a freed large block is reused by the next thread's allocation, not faulted
in again.

Each case runs in a fresh interpreter: malloc settings are process-wide and an arena is chosen once
per thread.
"""
import os
import platform
import subprocess
import sys

import pytest

from trainer import host_malloc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Like XLA CPU's step buffers: a 96 MiB block allocated, written and freed by a new worker thread,
# six times; prints whether the settings were applied and the page faults of the last five rounds.
_PROBE = r'''
import ctypes, resource, sys, threading
from trainer import host_malloc
applied = host_malloc.tune_for_cpu()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.restype, libc.free.argtypes = None, (ctypes.c_void_p,)
n = 96 << 20

def step():
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)

def in_new_thread():
  t = threading.Thread(target=step)
  t.start()
  t.join()

in_new_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  in_new_thread()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _probe(**env):
  run_env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', host_malloc.ENV)}
  run_env.update(env)
  run_env['PYTHONPATH'] = REPO
  out = subprocess.run([sys.executable, '-c', _PROBE], env=run_env, capture_output=True,
                       text=True, check=True, cwd=REPO).stdout.split()
  return out[0] == 'True', int(out[1])


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='glibc malloc only')
def test_tuned_process_reuses_a_freed_step_buffer_instead_of_faulting_it_in_again():
  applied, tuned_faults = _probe(JAX_PLATFORMS='cpu')
  default_applied, default_faults = _probe(JAX_PLATFORMS='cpu', **{host_malloc.ENV: '0'})
  assert applied and not default_applied
  # glibc's defaults: each round maps the block anew and faults its pages in again (4 KiB pages:
  # ~24.6k faults a round; even where transparent huge pages back the mapping, dozens a round).
  assert default_faults >= 5 * 16, default_faults
  assert tuned_faults * 10 < default_faults, (tuned_faults, default_faults)


@pytest.mark.parametrize('platforms,expected', [('cpu', True), (' cpu , cpu', True),
                                                ('cuda', False), ('cpu,tpu', False)])
def test_jax_platforms_decides_cpu_only(monkeypatch, platforms, expected):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_malloc.cpu_only() is expected


def test_not_applied_where_an_accelerator_will_run(monkeypatch):
  monkeypatch.setattr(host_malloc, '_applied', False)
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  assert host_malloc.tune_for_cpu() is False
