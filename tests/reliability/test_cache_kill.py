"""Guarantee: a SIGKILLed cache job leaves no false COMPLETED and no orphaned Beam workers, and its
rerun completes (byte-identity of the rerun: tests/pipelines/test_cache_runners.py)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

from tests.reliability import conftest as rel


def _children_running(pids):
  out = []
  for p in pids:
    try:
      stat = open(f'/proc/{p}/stat').read()
    except OSError:
      continue
    if stat[stat.rfind(')') + 2:].split()[0] != 'Z':
      out.append(p)
  return out


def _ppid(pid):
  stat = open(f'/proc/{pid}/stat').read()
  return int(stat[stat.rfind(')') + 2:].split()[1])


def _sdk_workers_of(driver):
  """Worker processes (python ... sdk_worker_main) descending from `driver` (via `sh -c`)."""
  out = []
  for cmdline in glob.glob('/proc/[0-9]*/cmdline'):
    pid = int(cmdline.split('/')[2])
    try:
      if b'sdk_worker_main' not in open(cmdline, 'rb').read() or b'python' not in open(
          cmdline, 'rb').read().split(b'\0')[0]:
        continue
      parent = _ppid(pid)
      if parent == driver or _ppid(parent) == driver:
        out.append(pid)
    except (OSError, ValueError):
      continue
  return out


def test_sigkill_of_the_driver_ends_its_workers_and_the_rerun_completes(tmp_path, task_env):
  corpus = tmp_path / 'docs.jsonl'
  docs = rel.good_docs(24) * 150  # ~0.5 MB: the job runs for a while
  corpus.write_text('\n'.join(json.dumps({'text': d}) for d in docs) + '\n')
  env = task_env(jsonl_file=corpus)
  out = tmp_path / 'cache'
  args = ['pipelines.cache_tasks', '--module_import=rel_tasks', '--tasks=reljsonl_lm',
          f'--output_cache_dir={out}', '--feature_lengths=targets:64', '--min_shards=2',
          '--min_input_ranges=8', '--min_range_bytes=4096', '--direct_num_workers=2',
          '--direct_running_mode=multi_processing', '--progress_interval_s=60']
  driver = subprocess.Popen([sys.executable, '-m'] + args, env=env, cwd=rel.REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  workers = []
  deadline = time.time() + 240
  while time.time() < deadline and driver.poll() is None:
    workers = _sdk_workers_of(driver.pid)
    progress = glob.glob(str(out / '.progress' / '*' / '*.json'))
    if workers and progress:  # the workers run our DoFn: killed mid-job
      break
    time.sleep(0.2)
  assert driver.poll() is None and workers, 'the job ended before it could be killed'
  os.kill(driver.pid, signal.SIGKILL)
  driver.wait()
  assert not (out / 'reljsonl_lm.tg64' / 'COMPLETED').exists()
  deadline = time.time() + 20
  while _children_running(workers) and time.time() < deadline:
    time.sleep(0.5)
  assert not _children_running(workers), 'Beam workers outlived their driver'
  rerun = rel.run_cmd([a.replace('multi_processing', 'in_memory') for a in args], env, timeout=400)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
  assert (out / 'reljsonl_lm.tg64' / 'COMPLETED').exists()
