"""Orbax checkpoints: resume after an interruption (SIGTERM) reproduces the uninterrupted run."""
import os
import tempfile
import signal

import jax
import numpy as np
import optax
import pytest

from trainer.checkpoint import checkpoints
from trainer.checkpoint import loader
from trainer.training import models
from trainer.training import loop as trainer
from trainer.model.config import TransformerConfig

# Compilation dominates these tests on a shared 2-core machine; the persistent cache lets the
# repeated runs (same model, same shapes) reuse executables.
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'gemma_adapt_test_jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

VOCAB, LENGTH = 64, 16


def tiny_model():
  cfg = TransformerConfig(vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, query_pre_attn_scalar=8,
                          sliding_window=4, dropout_rate=0.1)  # dropout: the RNG must resume too
  return models.DecoderOnlyModel(config=cfg)


def batch_at(index):
  rng = np.random.RandomState(1000 + index)  # every position distinct: data order matters
  targets = rng.randint(2, VOCAB, size=(4, LENGTH)).astype(np.int32)
  return {'decoder_target_tokens': targets,
          'decoder_input_tokens': np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], 1),
          'decoder_loss_weights': np.ones_like(targets, np.float32)}


class Data:
  """Deterministic stream; optionally sends this process SIGTERM when batch `kill_at` is read."""

  def __init__(self, kill_at=None):
    self.kill_at = kill_at
    self.starts = []

  def __call__(self, start_batch=0):
    self.starts.append(start_batch)
    i = start_batch
    while True:
      if i == self.kill_at:
        self.kill_at = None
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch_at(i)
      i += 1


def run(model_dir, data, total_steps=6, **kwargs):
  return trainer.train(model=tiny_model(), model_dir=str(model_dir), total_steps=total_steps,
                       optimizer=optax.adam(1e-2), train_dataset_fn=data, seed=3, **kwargs)


def test_sigterm_checkpoints_and_resume_reproduces_losses(tmp_path):
  full = run(tmp_path / 'full', Data())
  # SIGTERM arrives while batch 3 is fetched (before step 4 runs): the loop finishes the step,
  # saves and stops; the rerun resumes at the saved step with the saved data position.
  first = run(tmp_path / 'cut', Data(kill_at=3),
              checkpoint_cfg=checkpoints.CheckpointConfig(period=0))
  assert first.interrupted and first.step < 6
  cut_step = first.step
  assert os.listdir(tmp_path / 'cut' / 'checkpoints') == [str(cut_step)]
  resumed_data = Data()
  second = run(tmp_path / 'cut', resumed_data)
  assert second.resumed_from == cut_step and resumed_data.starts == [cut_step]
  assert not second.interrupted and second.step == 6
  losses = {**first.losses, **second.losses}
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([losses[s] for s in range(1, 7)],
                             [full.losses[s] for s in range(1, 7)], rtol=1e-6)


def test_keep_last_n_and_init_checkpoint_restores_params_only(tmp_path):
  res = run(tmp_path / 'a', Data(), total_steps=4,
            checkpoint_cfg=checkpoints.CheckpointConfig(period=1, keep=2, async_save=False))
  assert sorted(os.listdir(tmp_path / 'a' / 'checkpoints'), key=int) == ['3', '4']
  model = tiny_model()
  params = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
      __import__('flax').core.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                                         batch_at(0))))
  trained = loader.restore_params(str(tmp_path / 'a'), params)  # manager dir: latest step
  step3 = loader.restore_params(str(tmp_path / 'a' / 'checkpoints' / '3'), params)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(trained),
                                                      jax.tree_util.tree_leaves(step3)))
  checkpoints.save_params(str(tmp_path / 'init'), trained)
  # A new run initialised from those params; a zero optimiser keeps them: its checkpoint holds
  # exactly the restored params and it starts at step 0 (params only, not the old run's state).
  out = trainer.train(model=tiny_model(), model_dir=str(tmp_path / 'b'), total_steps=1,
                      optimizer=optax.set_to_zero(), train_dataset_fn=Data(),
                      init_checkpoint=str(tmp_path / 'init'))
  assert out.resumed_from is None and out.step == 1
  again = loader.restore_params(str(tmp_path / 'b'), params)
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_params_errors_name_the_path(tmp_path):
  with pytest.raises(ValueError, match='init_checkpoint: .*missing.* is not a directory'):
    loader.restore_params(str(tmp_path / 'missing'), {})
  with pytest.raises(ValueError, match='CheckpointConfig.period must be an int >= 0'):
    checkpoints.CheckpointConfig(period=-1)


def test_restore_params_takes_the_models_entries_from_a_larger_checkpoint(tmp_path):
  # A distillation run saves {'encoder', 'decoder', 'teacher'}; the student alone restores from it.
  student = {'encoder': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)},
             'decoder': {'w': np.full((3,), 2.0, np.float32)}}
  checkpoints.save_params(str(tmp_path / 'distill'),
                          dict(student, teacher={'w': np.ones((4, 4), np.float32)}))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), student)
  restored = loader.restore_params(str(tmp_path / 'distill'), abstract)
  assert sorted(restored) == ['decoder', 'encoder']
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(student)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # A model needing an entry the checkpoint lacks still fails, naming the directory.
  bigger = dict(abstract, head={'w': jax.ShapeDtypeStruct((2,), np.float32, sharding=device)})
  with pytest.raises(ValueError, match='init_checkpoint: cannot restore params from .*distill'):
    loader.restore_params(str(tmp_path / 'distill'), bigger)


def _abstract(tree):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def test_init_checkpoint_may_be_a_hugging_face_directory(tmp_path):
  """Fine-tuning starts from an imported HF checkpoint: Gemma 2 and T5Gemma directories."""
  from flax.core import meta
  from trainer.checkpoint import hf_gemma2
  from trainer.checkpoint import hf_t5gemma
  from trainer.model.config import EncoderDecoderConfig
  decoder = tiny_model()
  batch = batch_at(0)
  params = meta.unbox(decoder.init(jax.random.PRNGKey(7), batch))
  hf_gemma2.export_decoder(params, decoder.config, str(tmp_path / 'gemma2'))
  restored = loader.restore_params(str(tmp_path / 'gemma2'), _abstract(params))
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  enc_dec = models.EncoderDecoderModel(
      config=EncoderDecoderConfig(encoder=decoder.config, decoder=decoder.config))
  enc_batch = dict(batch, encoder_input_tokens=batch['decoder_target_tokens'])
  ed_params = meta.unbox(enc_dec.init(jax.random.PRNGKey(8), enc_batch))
  hf_t5gemma.export_t5gemma(ed_params, enc_dec.config, str(tmp_path / 't5gemma'))
  restored = loader.restore_params(str(tmp_path / 't5gemma'), _abstract(ed_params))
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(ed_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # A directory that does not fit the model names what is wrong.
  with pytest.raises(ValueError, match='does not fit this model'):
    loader.restore_params(str(tmp_path / 'gemma2'), _abstract(ed_params))
