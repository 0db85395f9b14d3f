"""Guarantee: a run directory stays consistent across stops, resumes and damaged checkpoints.

One interrupted run (the real `python -m trainer.train`, tiny model) is reused by every check:
* metrics.jsonl logs step 1 and, after a resume, one line per step (replayed steps not doubled);
* a damaged newest checkpoint (a truncated array file) is reported by step and file and the run
  resumes from the newest intact one; `fallback_on_corrupt=False` makes it a one-line error;
* a resume with a different model (VOCAB_SIZE) is refused in one line naming the field, and leaves
  model_config.json and config.gin as they were.
"""
import glob
import os
import shutil

from tests.reliability import conftest as rel


def _truncate_biggest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, 'params', 'ocdbt.process_0', 'd', '*'))
  path = max(files, key=os.path.getsize)
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])


def test_stop_damage_fallback_and_mismatch(tmp_path, task_env, text_corpus):
  env = task_env(text_file=text_corpus)
  run = tmp_path / 'run'
  args = rel.train_args(run, steps=6, extra=['--gin.CHECKPOINT_PERIOD=2',
                                             '--gin.trainer.train.stop_after_steps=4'])
  first = rel.run_cmd(args, env)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  assert 'stopping at step 4' in first.stdout
  assert rel.metrics_steps(run) == [1, 2, 3, 4]  # step 1 is logged
  config_json = (run / 'model_config.json').read_bytes()
  config_gin = (run / 'config.gin').read_bytes()

  # A resume with another VOCAB_SIZE: one line naming the field; the run files are untouched.
  mismatch = rel.run_cmd(rel.train_args(run, steps=6, vocab_size=300), env)
  err = rel.one_line_error(mismatch, 'train')
  assert 'vocab_size: 259 -> 300' in err, err
  assert (run / 'model_config.json').read_bytes() == config_json
  assert (run / 'config.gin').read_bytes() == config_gin

  _truncate_biggest_array_file(run / 'checkpoints' / '4')
  strict_dir = tmp_path / 'strict'
  shutil.copytree(run, strict_dir)

  # Damaged step 4: named, then the run resumes from step 2 and replays 3..6 once.
  resumed = rel.run_cmd(rel.train_args(run, steps=6, extra=['--gin.CHECKPOINT_PERIOD=2']), env)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  assert 'checkpoint step 4 is damaged' in resumed.stdout, resumed.stdout
  assert 'resuming from step 2' in resumed.stdout
  # The size manifest finds the truncation before orbax reads (no reader-thread tracebacks).
  assert 'were written' in resumed.stdout, resumed.stdout
  assert 'Traceback' not in resumed.stderr, resumed.stderr[-3000:]
  assert 'train: done at step 6' in resumed.stdout
  assert rel.metrics_steps(run) == [1, 2, 3, 4, 5, 6]
  assert os.path.isdir(run / 'corrupt_checkpoints' / '4')
  assert sorted(os.listdir(run / 'checkpoints')) == ['2', '4', '6']  # step 4 written afresh

  # The same damage with fallback_on_corrupt=False: one line naming the step and the file.
  strict = rel.run_cmd(rel.train_args(strict_dir, steps=6, extra=[
      '--gin.checkpoints.CheckpointConfig.fallback_on_corrupt=False']), env)
  err = rel.one_line_error(strict, 'train')
  assert 'checkpoint step 4 is damaged' in err and 'params' in err, err
