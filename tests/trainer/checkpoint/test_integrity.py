"""Size manifests: every finalised checkpoint records its files' sizes, and a truncated or missing
file is named (step, path, sizes) before orbax reads any array."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from trainer.checkpoint import checkpoints
from trainer.checkpoint import integrity


def _state():
  params = {'embed': np.arange(4096, dtype=np.float32).reshape(64, 64),
            'layer': {'kernel': np.ones((64, 32), np.float32)}}
  return dict(params=params, opt_state={'mu': np.zeros((64, 32), np.float32)},
              train_meta={'step': np.array(2, np.int32)},
              data_state={'batches_consumed': 2, 'seed': 0})


def _abstract(state):
  return {f'abstract_{k}': checkpoints.abstract_like(state[k])
          for k in ('params', 'opt_state', 'train_meta')}


def _truncate_biggest(step_dir):
  path = max(glob.glob(os.path.join(step_dir, 'params', 'ocdbt.process_0', 'd', '*')),
             key=os.path.getsize)
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(size // 2)
  return path, size


@pytest.mark.parametrize('async_save', [False, True])
def test_manifest_written_for_each_saved_step_and_truncation_named(tmp_path, async_save):
  state = _state()
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'ckpt'),
                                  checkpoints.CheckpointConfig(period=1, keep=None,
                                                               async_save=async_save))
  for step in (1, 2):
    assert ckpt.save(step, **state)
  ckpt.close()
  for step in (1, 2):
    manifest = json.load(open(tmp_path / 'ckpt' / str(step) / integrity.MANIFEST))['files']
    # every file of the step, with its size; the manifest does not list itself
    on_disk = {os.path.relpath(p, tmp_path / 'ckpt' / str(step))
               for p in glob.glob(str(tmp_path / 'ckpt' / str(step) / '**' / '*'), recursive=True)
               if os.path.isfile(p) and not p.endswith(integrity.MANIFEST)}
    assert set(manifest) == on_disk
    assert any(k.startswith('params/ocdbt.process_0/d/') for k in manifest)

  path, size = _truncate_biggest(str(tmp_path / 'ckpt' / '2'))
  reader = checkpoints.Checkpointer(str(tmp_path / 'ckpt'), checkpoints.CheckpointConfig())
  with pytest.raises(checkpoints.CorruptCheckpointError,
                     match=f'checkpoint step 2 is damaged: {path} has {size // 2} bytes, '
                           f'{size} were written'):
    reader.restore(2, **_abstract(state))
  step, restored = reader.restore_newest_intact(**_abstract(state), log=lambda line: None)
  assert step == 1
  np.testing.assert_array_equal(restored[0]['embed'], state['params']['embed'])
  reader.close()


def test_params_checkpoint_missing_file_is_named_and_old_checkpoints_still_read(tmp_path):
  params = _state()['params']
  checkpoints.save_params(str(tmp_path / 'p'), params)
  abstract = checkpoints.abstract_like(params)
  restored = checkpoints.restore_orbax_params(str(tmp_path / 'p'), abstract)
  np.testing.assert_array_equal(restored['layer']['kernel'], params['layer']['kernel'])
  # A checkpoint written before manifests existed (no manifest) is read as before.
  os.remove(tmp_path / 'p' / integrity.MANIFEST)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         checkpoints.read_params(str(tmp_path / 'p')), params)
  integrity.write_manifest(str(tmp_path / 'p'))
  victim = glob.glob(str(tmp_path / 'p' / 'ocdbt.process_0' / 'd' / '*'))[0]
  os.remove(victim)
  with pytest.raises(checkpoints.CorruptCheckpointError, match=f'{victim} is missing'):
    checkpoints.restore_orbax_params(str(tmp_path / 'p'), abstract)
