"""Guarantee: eval and export on a damaged or mismatched checkpoint end in one line (exit 2) naming
the step and the file; nothing else on stderr (no orbax/async teardown tracebacks).

The checkpoint is a real 2-step run of the tiny model (trainer.training.loop.train in this
process, synthetic batches); the commands are the real `python -m trainer.eval` / `export_hf`.
"""
import glob
import os
import shutil
import stat

import numpy as np
import optax
import pytest

from tests.reliability import conftest as rel


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  from trainer import gin_flags  # pylint: disable=g-import-not-at-top
  from trainer.checkpoint import checkpoints  # pylint: disable=g-import-not-at-top
  from trainer.training import loop, models  # pylint: disable=g-import-not-at-top
  config = gin_flags.config_from_gin(['gin/models/gemma2_tiny.gin'], ['VOCAB_SIZE = 259'])

  def data(start_batch=0):
    rng = np.random.RandomState(start_batch)
    while True:
      t = rng.randint(3, 259, size=(2, 32)).astype(np.int32)
      yield {'decoder_target_tokens': t, 'decoder_loss_weights': np.ones_like(t, np.float32),
             'decoder_input_tokens': np.concatenate([np.zeros((2, 1), np.int32), t[:, :-1]], 1)}

  root = tmp_path_factory.mktemp('damaged') / 'run'
  loop.train(model=models.DecoderOnlyModel(config=config), model_dir=str(root), total_steps=2,
             optimizer=optax.adam(1e-3), train_dataset_fn=data,
             checkpoint_cfg=checkpoints.CheckpointConfig(period=0, async_save=False))
  return root


def _eval(checkpoint, env, vocab_size=259):
  return rel.run_cmd(['trainer.eval', '--module_import=rel_tasks',
                      '--gin_file=gin/models/gemma2_tiny.gin', '--gin_file=gin/runs/eval.gin',
                      f"--gin.CHECKPOINT_PATH='{checkpoint}'",
                      "--gin.MIXTURE_OR_TASK_NAME='reltext_lm'", "--gin.EVAL_MODE='lm'",
                      "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", '--gin.BATCH_SIZE=4', '--gin.PREFIX_LM=False',
                      '--gin.MAX_EXAMPLES=4', f'--gin.VOCAB_SIZE={vocab_size}'], env)


def _damaged_copy(run_dir, tmp_path, how):
  copy = tmp_path / 'run'
  shutil.copytree(run_dir, copy)
  params = copy / 'checkpoints' / '2' / 'params'
  if how == 'truncate':
    path = max(glob.glob(str(params / 'ocdbt.process_0' / 'd' / '*')), key=os.path.getsize)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
  else:
    open(params / '_METADATA', 'w').close()
  return copy


def test_eval_with_another_vocab_size_is_one_line(run_dir, task_env, text_corpus):
  proc = _eval(run_dir, task_env(text_file=text_corpus), vocab_size=300)
  err = rel.one_line_error(proc, 'eval')
  assert '259' in err and '300' in err, err


@pytest.mark.parametrize('how', ['truncate', 'empty_metadata'])
def test_eval_and_export_of_a_damaged_checkpoint_name_step_and_file(
    run_dir, task_env, text_corpus, tmp_path, how):
  damaged = _damaged_copy(run_dir, tmp_path, how)
  env = task_env(text_file=text_corpus)
  err = rel.one_line_error(_eval(damaged, env), 'eval')
  assert 'checkpoint step 2 is damaged' in err, err
  if how == 'empty_metadata':
    assert 'params/_METADATA is not valid JSON (empty file)' in err, err
  else:
    assert 'params/ocdbt.process_0/d/' in err and 'bytes, ' in err and 'were written' in err, err
  proc = rel.run_cmd(['trainer.export_hf', f'--checkpoint={damaged}',
                      f'--output={tmp_path / "hf"}'], env)
  err = rel.one_line_error(proc, 'export_hf')
  assert 'checkpoint step 2 is damaged' in err, err


def test_export_writes_weights_with_the_usual_mode(run_dir, task_env, tmp_path):
  out = tmp_path / 'hf'
  proc = rel.run_cmd(['trainer.export_hf', f'--checkpoint={run_dir}', f'--output={out}'],
                     task_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(os.stat(out / 'model.safetensors').st_mode) == 0o666 & ~umask
