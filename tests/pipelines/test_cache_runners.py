"""The cache job on several runners: multi-process local and Dask give the same bytes as the
in-process run; a killed job leaves nothing marked complete and a rerun completes it."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

# Fixtures and helpers shared with test_cache_tasks.py.
from test_cache_tasks import cache_env, dir_digest, LENGTHS, run_job  # noqa: F401  pylint: disable=unused-import

REPO = pathlib.Path(__file__).resolve().parents[2]
# t5's span corruption (tf.data), a task with dead letters, and the project's UL2 (NumPy objective).
TASKS = ["cachetest_span", "cachetestbad_tokens", "cachetestul2_ul2"]


@pytest.fixture(scope="module")
def reference(cache_env, tmp_path_factory):  # noqa: F811
  out = tmp_path_factory.mktemp("reference")
  run_job(out, TASKS, feature_lengths=LENGTHS | {"targets": 16})
  return dir_digest(out)


def test_multiprocess_and_dask_runners_write_the_same_bytes(cache_env, reference, tmp_path):  # noqa: F811
  tasks = TASKS
  run_job(tmp_path / "mp", tasks, runner="local", num_workers=2,
          running_mode="multi_processing")
  assert dir_digest(tmp_path / "mp") == reference
  result = run_job(tmp_path / "dask", tasks, runner="DaskRunner", num_workers=2)
  assert dir_digest(tmp_path / "dask") == reference
  assert result["metrics"] == {}  # The DaskRunner has no metrics; the stats files have them.
  stats = result["summary"]["cachetestbad_tokens.in64_tg16"]["train"]
  assert sum(stats["dead_letters"].values()) == len(cache_env["bad"])


def test_killed_job_is_never_complete_and_a_rerun_completes(cache_env, reference, tmp_path):  # noqa: F811
  out = tmp_path / "out"
  proc = subprocess.Popen(
      [sys.executable, "-m", "pipelines.cache_tasks", "--module_import=cache_test_tasks",
       f"--tasks={','.join(TASKS)}", f"--output_cache_dir={out}",
       "--feature_lengths=inputs:64,targets:16", "--min_shards=3", "--min_input_ranges=4",
       "--min_range_bytes=4096", "--direct_num_workers=2", "--progress_interval_s=1"],
      cwd=REPO, env={**os.environ, **cache_env["env"]}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, start_new_session=True)
  # Kill the whole process group (driver and workers) once the first input range is done.
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    progress = list(out.glob(".progress/*/*.json"))
    if any('"done": true' in p.read_text() for p in progress if p.exists()):
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[0]
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not list(out.rglob("COMPLETED"))
  result = run_job(out, TASKS)
  assert any("partial output" in line for line in result["logs"])
  assert dir_digest(out) == reference
