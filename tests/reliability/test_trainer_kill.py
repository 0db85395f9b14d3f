"""Guarantee: a trainer stopped while it writes a checkpoint resumes exactly, and its run directory
reads as one run.

The stops are injected deterministically into the real `python -m trainer.train` with
GEMMA_ADAPT_FAULT (`trainer/checkpoint/fault_injection.py`): SIGKILL, then SIGTERM, each while
orbax writes step 4 (its files in the temporary directory, not yet committed). Checked against an
uninterrupted run of the same configuration:
* after the SIGKILL, step 4 is not a step (its temporary directory is left, without the commit
  file); the next start removes it and resumes from step 2, the previous intact step;
* the SIGTERM lets the write commit, saves where the run stops, exits 0;
* the final run ends with bit-identical per-step losses (metrics.jsonl) and parameters;
* metrics.jsonl has one line per step (a line cut by the kill included) and TensorBoard, read back
  with its own event loader, shows one value per step: the replayed steps' values, once;
* no traceback on stderr.

(SIGTERM/SIGINT between saves: tests/trainer/checkpoint/test_checkpoints.py; a damaged
checkpoint: test_resume.py.)
"""
import glob
import json
import os

import jax
import numpy as np

from tests.reliability import conftest as rel


def _train_records(run):
  return [r for r in map(json.loads, open(run / 'metrics.jsonl')) if r['split'] == 'train']


def _tensorboard_scalars(logdir, tag):
  """[(step, value)] as TensorBoard's Python event loader shows them (purges applied)."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)]


def _params(run, step):
  from trainer.checkpoint import checkpoints
  return checkpoints.read_params(str(run / 'checkpoints' / str(step)))


def _clean(proc):
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]


def test_kill_and_term_during_checkpoint_write_resume_exactly(tmp_path, task_env, text_corpus):
  env = task_env(text_file=text_corpus)
  base, run = tmp_path / 'base', tmp_path / 'run'
  extra = ['--gin.CHECKPOINT_PERIOD=2']
  _clean(rel.run_cmd(rel.train_args(base, steps=8, extra=extra), env))
  args = rel.train_args(run, steps=8, extra=extra)

  killed = rel.run_cmd(args, dict(env, GEMMA_ADAPT_FAULT='kill_during_save:4'))
  assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-3000:]
  ckpts = run / 'checkpoints'
  assert sorted(s for s in os.listdir(ckpts) if s.isdigit()) == ['2']
  tmp_dirs = glob.glob(str(ckpts / '4.orbax-checkpoint-tmp*'))
  assert len(tmp_dirs) == 1, os.listdir(ckpts)  # killed mid-write: step 4's files, uncommitted
  assert glob.glob(os.path.join(tmp_dirs[0], 'params', '*'))
  assert not os.path.exists(os.path.join(tmp_dirs[0], 'commit_success.txt'))
  logged = [json.loads(l)['step'] for l in open(run / 'metrics.jsonl') if l.endswith('\n')]
  assert max(logged) >= 4  # steps past step 2 were logged: they are replayed
  with open(run / 'metrics.jsonl', 'a') as f:
    f.write('{"split": "train", "st')  # and a line cut by the kill

  termed = rel.run_cmd(args, dict(env, GEMMA_ADAPT_FAULT='term_during_save:4'))
  _clean(termed)
  assert 'start step 2' in termed.stdout, termed.stdout  # the previous intact step
  assert 'stopping at step' in termed.stdout and '(SIGTERM)' in termed.stdout, termed.stdout
  assert not glob.glob(str(ckpts / '*.orbax-checkpoint-tmp*')), os.listdir(ckpts)
  assert '4' in os.listdir(ckpts)  # the write the SIGTERM interrupted was committed

  final = rel.run_cmd(args, env)
  _clean(final)
  assert 'train: done at step 8' in final.stdout

  want = {r['step']: r['loss'] for r in _train_records(base)}
  assert sorted(want) == list(range(1, 9))
  got = _train_records(run)
  assert [r['step'] for r in got] == list(range(1, 9))  # one line per step
  assert {r['step']: r['loss'] for r in got} == want  # bit-identical losses
  base_params, run_params = _params(base, 8), _params(run, 8)
  assert jax.tree_util.tree_structure(base_params) == jax.tree_util.tree_structure(run_params)
  for a, b in zip(jax.tree_util.tree_leaves(base_params), jax.tree_util.tree_leaves(run_params)):
    np.testing.assert_array_equal(a, b)  # bit-identical parameters

  # TensorBoard: one value per step, those of the segment that (re)played it.
  shown = _tensorboard_scalars(run / 'train', 'loss')
  assert [s for s, _ in shown] == list(range(1, 9)), shown
  assert [v for _, v in shown] == [np.float32(want[s]) for s in range(1, 9)]
  assert len(glob.glob(str(run / 'train' / 'events.out.tfevents.*'))) == 3  # one per segment
