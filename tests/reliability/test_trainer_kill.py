"""Guarantee: a trainer killed with SIGKILL (no chance to save) resumes from its last checkpoint,
and the run directory reads as one run: metrics.jsonl has one line per step, none cut short.

(SIGTERM/SIGINT save and resume to identical losses: tests/trainer/checkpoint/test_checkpoints.py;
a damaged checkpoint left by a kill mid-write: test_resume.py.)
"""
import json
import os
import signal
import subprocess
import sys
import time

from tests.reliability import conftest as rel


def test_sigkill_mid_run_resumes_with_one_metrics_line_per_step(tmp_path, task_env, text_corpus):
  env = task_env(text_file=text_corpus)
  run = tmp_path / 'run'
  args = rel.train_args(run, steps=8, extra=['--gin.CHECKPOINT_PERIOD=2'])
  proc = subprocess.Popen([sys.executable, '-m'] + args, env=env, cwd=rel.REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = run / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(l)['step'] >= 3 for l in open(metrics) if
                                l.endswith('\n')):
      break  # step 2's checkpoint is being (or has been) written; steps 3.. are past it
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  with open(metrics, 'a') as f:
    f.write('{"split": "train", "st')  # a line cut by the kill
  resumed = rel.run_cmd(args, env)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  assert 'train: done at step 8' in resumed.stdout
  assert rel.metrics_steps(run) == list(range(1, 9))
  assert sorted(int(s) for s in os.listdir(run / 'checkpoints') if s.isdigit())[-1] == 8
