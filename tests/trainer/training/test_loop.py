"""The training loop on a tiny real Gemma 2 decoder with synthetic batches (no TF)."""
import glob
import json
import os
import tempfile

import jax
import numpy as np
import optax
import pytest

from trainer.training import models
from trainer.training import optimizers
from trainer.training import loop as trainer
from trainer.model.config import TransformerConfig

# Compilation dominates these tests on a shared 2-core machine; the persistent cache lets the
# repeated runs (same model, same shapes) reuse executables.
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'gemma_adapt_test_jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

LENGTH = 16
VOCAB = 64


def tiny_model(dropout_rate=0.0):
  cfg = TransformerConfig(vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                          head_dim=8, mlp_dim=64, query_pre_attn_scalar=8, sliding_window=4,
                          dropout_rate=dropout_rate)
  return models.DecoderOnlyModel(config=cfg, z_loss=1e-4)


def make_batch(index, batch_size=4, pad_from=None):
  rng = np.random.RandomState(index % 3)  # three distinct batches, repeated: learnable
  targets = rng.randint(2, VOCAB, size=(batch_size, LENGTH)).astype(np.int32)
  weights = np.ones_like(targets, np.float32)
  if pad_from is not None:
    for row, start in enumerate(pad_from):
      targets[row, start:] = 0
      weights[row, start:] = 0
  inputs = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  return {'decoder_target_tokens': targets, 'decoder_input_tokens': inputs,
          'decoder_loss_weights': weights}


def dataset_fn(start_batch=0):
  i = start_batch
  while True:
    yield make_batch(i)
    i += 1


def test_loss_decreases_and_metrics_are_written(tmp_path):
  sched = optimizers.create_schedule(base_learning_rate=3e-2, warmup_steps=2, decay='constant')
  result = trainer.train(
      model=tiny_model(), model_dir=str(tmp_path), total_steps=16,
      optimizer=optimizers.create_optimizer(name='adamw', learning_rate=sched),
      learning_rate_fn=sched, train_dataset_fn=dataset_fn,
      eval_dataset_fn=lambda: (make_batch(i) for i in range(2)), eval_period=8, eval_steps=2,
      log_period=4)
  assert result.step == 16 and not result.interrupted
  first = np.mean([result.losses[s] for s in (1, 2, 3)])
  last = np.mean([result.losses[s] for s in (14, 15, 16)])
  assert last < first - 0.3, (first, last)
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  train_records = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train_records] == [1, 4, 8, 12, 16]  # step 1: logged, untimed
  assert 'tokens_per_s' not in train_records[0]
  for key in ('loss', 'accuracy', 'z_loss', 'learning_rate', 'grad_norm', 'tokens_per_s',
              'step_time_s'):
    assert key in train_records[-1], key
  assert train_records[-1]['learning_rate'] == pytest.approx(3e-2)
  assert train_records[-1]['tokens_per_s'] > 0
  eval_records = [r for r in records if r['split'] == 'eval']
  assert [r['step'] for r in eval_records] == [8, 16]
  assert eval_records[1]['loss'] < eval_records[0]['loss'] + 1.0
  assert glob.glob(str(tmp_path / 'train' / 'events.out.tfevents.*'))
  assert glob.glob(str(tmp_path / 'eval' / 'events.out.tfevents.*'))
  assert os.path.isdir(tmp_path / 'checkpoints' / '16')
  # The model's config beside the checkpoints, in trainer.adapt's format (adapt/export read it).
  from trainer.model import config_io
  saved = json.load(open(tmp_path / 'model_config.json'))
  assert config_io.transformer_config_from_dict(saved, 'model_config.json') == tiny_model().config


def test_gradient_accumulation_equals_full_batch():
  model = tiny_model()
  # Unequal numbers of target tokens per row: micro-batches must be weighted by token counts.
  batch = make_batch(0, batch_size=4, pad_from=[3, 16, 9, 12])
  params = jax.tree_util.tree_map(np.asarray, __import__('flax').core.meta.unbox(
      model.init(jax.random.PRNGKey(0), batch)))
  tx = optax.sgd(0.5)
  from trainer.training.train_state import TrainState
  state = TrainState.create(params=params, tx=tx, rng=jax.random.PRNGKey(1))
  full_state, full_metrics = jax.jit(trainer.make_train_step(model, tx))(state, batch)
  acc_state, acc_metrics = jax.jit(trainer.make_train_step(model, tx, micro_batches=2))(state,
                                                                                       batch)
  assert float(acc_metrics['loss'][1]) == float(full_metrics['loss'][1]) == 3 + 16 + 9 + 12
  np.testing.assert_allclose(float(acc_metrics['loss'][0]), float(full_metrics['loss'][0]),
                             rtol=1e-5)
  np.testing.assert_allclose(float(acc_metrics['grad_norm']), float(full_metrics['grad_norm']),
                             rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(acc_state.params),
                  jax.tree_util.tree_leaves(full_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-4)


class _NanAtBatch:

  def __init__(self, bad_index):
    self.bad_index = bad_index

  def __call__(self, start_batch=0):
    i = start_batch
    while True:
      batch = make_batch(i)
      if i == self.bad_index:
        batch['decoder_loss_weights'] = batch['decoder_loss_weights'] * np.float32('nan')
      yield batch
      i += 1


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
  from trainer.checkpoint import checkpoints
  with pytest.raises(trainer.TrainingDivergedError,
                     match=r'diverged at step 4: loss=nan.*last good checkpoint is step 2'):
    trainer.train(model=tiny_model(), model_dir=str(tmp_path), total_steps=10,
                  optimizer=optax.adam(1e-3), train_dataset_fn=_NanAtBatch(3),
                  checkpoint_cfg=checkpoints.CheckpointConfig(period=2, async_save=False))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']


def test_bad_arguments_name_the_field(tmp_path):
  with pytest.raises(ValueError, match=r'train.total_steps must be a positive int, got .abc.'):
    trainer.train(model=tiny_model(), model_dir=str(tmp_path), total_steps='abc',
                  optimizer=optax.sgd(0.1), train_dataset_fn=dataset_fn)
  with pytest.raises(ValueError, match='train.optimizer must be an optax.GradientTransformation'):
    trainer.train(model=tiny_model(), model_dir=str(tmp_path), total_steps=1,
                  optimizer='adam', train_dataset_fn=dataset_fn)


def _init(model, batch):
  from flax.core import meta
  return jax.jit(lambda r: meta.unbox(model.init(r, batch)))(jax.random.PRNGKey(0))


def _enc_dec_model():
  from trainer.model.config import EncoderDecoderConfig
  enc = TransformerConfig(vocab_size=VOCAB, embed_dim=48, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, query_pre_attn_scalar=8,
                          sliding_window=4)
  dec = TransformerConfig(vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, query_pre_attn_scalar=8,
                          sliding_window=4)
  return models.EncoderDecoderModel(config=EncoderDecoderConfig(encoder=enc, decoder=dec))


def test_encoder_decoder_wrapper_ignores_unpacked_padding():
  model = _enc_dec_model()
  rng = np.random.RandomState(0)
  enc = rng.randint(2, VOCAB, size=(1, 6)).astype(np.int32)
  tgt = rng.randint(2, VOCAB, size=(1, 5)).astype(np.int32)
  short = {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
           'decoder_input_tokens': np.concatenate([[[0]], tgt[:, :-1]], 1).astype(np.int32),
           'decoder_loss_weights': np.ones((1, 5), np.float32)}
  padded = {'encoder_input_tokens': np.pad(enc, ((0, 0), (0, 4))),
            'decoder_target_tokens': np.pad(tgt, ((0, 0), (0, 3))),
            'decoder_input_tokens': np.pad(short['decoder_input_tokens'], ((0, 0), (0, 3))),
            'decoder_loss_weights': np.pad(short['decoder_loss_weights'], ((0, 0), (0, 3)))}
  params = _init(model, padded)
  loss_fn = jax.jit(lambda p, b: model.loss_fn(p, b, None))  # jit: eager flax is slow on CPU
  loss_short, m_short = loss_fn(params, short)
  loss_padded, m_padded = loss_fn(params, padded)
  assert float(m_short['loss'][1]) == float(m_padded['loss'][1]) == 5
  np.testing.assert_allclose(float(loss_padded), float(loss_short), rtol=1e-5)
  assert model.tokens_per_example({k: v.shape for k, v in padded.items()}) == 10 + 8
  assert model.num_params(params) > 0


def test_prefix_lm_wrapper_passes_the_bidirectional_prefix():
  model = models.DecoderOnlyModel(config=tiny_model().config, prefix_lm=True)
  assert model.FEATURE_CONVERTER_NAME == 'PrefixLMFeatureConverter'
  batch = make_batch(0, batch_size=2)
  params = _init(model, batch)
  loss_fn = jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])
  causal = loss_fn(params, batch)
  prefix = dict(batch, decoder_causal_attention=np.array([[1] * 6 + [0] * 10] * 2, np.int32))
  with_prefix = loss_fn(params, prefix)
  assert abs(float(with_prefix) - float(causal)) > 1e-6


def test_prefix_lm_wrapper_can_read_the_prefix_causally():
  # bidirectional_prefix=False: PrefixLM features scored as a causal LM would score them.
  config = tiny_model().config
  batch = make_batch(0, batch_size=2)
  prefix = dict(batch, decoder_causal_attention=np.array([[1] * 6 + [0] * 10] * 2, np.int32))
  causal_reader = models.DecoderOnlyModel(config=config, prefix_lm=True, bidirectional_prefix=False)
  params = _init(causal_reader, batch)
  plain = models.DecoderOnlyModel(config=config)
  loss = lambda m, b: float(jax.jit(lambda p, x: m.loss_fn(p, x, None)[0])(params, b))
  assert loss(causal_reader, prefix) == pytest.approx(loss(plain, batch), abs=1e-6)
  bidirectional = models.DecoderOnlyModel(config=config, prefix_lm=True)
  assert abs(loss(bidirectional, prefix) - loss(plain, batch)) > 1e-6


def test_url_model_dir_is_rejected_in_one_line():
  with pytest.raises(ValueError, match=r"MODEL_DIR\) must be a file-system path, got 'gs://b/run'.*"
                                       r'gcsfuse'):
    trainer.train(model=tiny_model(), model_dir='gs://b/run', total_steps=1,
                  optimizer=optax.sgd(0.1), train_dataset_fn=dataset_fn)


def test_eval_callback_sees_live_params_and_stops_early_with_a_checkpoint(tmp_path):
  """`eval_callback(step, params)` runs every eval_period on the params in memory; a true 'stop'
  ends the run there (checkpointed, not 'interrupted'), and a rerun resumes from that step."""
  sched = optimizers.create_schedule(base_learning_rate=3e-2, warmup_steps=2, decay='constant')
  model = tiny_model()
  batch = make_batch(0)
  seen = []

  def callback(step, params):
    loss = float(jax.jit(model.eval_fn)(params, batch)['loss'][0])
    seen.append((step, loss))
    return {'batch0_loss': loss, 'stop': step >= 6}

  kw = dict(model=model, model_dir=str(tmp_path), total_steps=12,
            optimizer=optimizers.create_optimizer(name='adamw', learning_rate=sched),
            learning_rate_fn=sched, train_dataset_fn=dataset_fn, log_period=3)
  result = trainer.train(eval_period=3, eval_callback=callback, **kw)
  assert result.step == 6 and result.stopped_early and not result.interrupted
  assert [s for s, _ in seen] == [3, 6]
  assert seen[1][1] < seen[0][1]  # the params it saw are the ones being trained
  assert result.callback_metrics == {3: {'batch0_loss': seen[0][1]},
                                     6: {'batch0_loss': seen[1][1]}}
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['split'] == 'callback'] == [3, 6]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['6']
  # Without a callback the run resumes at the early-stopping step and finishes.
  again = trainer.train(**kw)
  assert again.resumed_from == 6 and again.step == 12 and not again.stopped_early
  with pytest.raises(ValueError, match=r'train.eval_callback needs train.eval_period > 0'):
    trainer.train(eval_callback=callback, **dict(kw, model_dir=str(tmp_path / 'other')))


def test_early_stopping_keeps_the_best_params_through_donated_train_steps(tmp_path):
  """`EarlyStopping(keep_best_params=True)`: the kept copy of the best params survives the train
  step's buffer donation, and `score_best()` scores the dev split once, on exactly those params."""
  from trainer.evaluation import in_loop
  sched = optimizers.create_schedule(base_learning_rate=3e-2, warmup_steps=2, decay='constant')
  model = tiny_model()
  eval_loss = jax.jit(model.eval_fn)

  class LossScorer:  # a scorer: -loss on one fixed batch ('accuracy' rises as the loss falls)
    def __init__(self, split, seed):
      self.split, self.name, self.batch, self.calls = split, f'batch{seed}', make_batch(seed), 0

    def __call__(self, params):
      self.calls += 1
      m = eval_loss(params, self.batch)['loss']
      return {'accuracy': -float(m[0] / m[1])}

  held, dev = LossScorer('heldout', 0), LossScorer('validation', 1)
  # A held-out 'accuracy' that peaks at step 6 whatever the params do: the best is not the last.
  bump = {3: 0.0, 6: 100.0, 9: 0.0, 12: 0.0}
  monitor = type('Bumped', (), {'split': 'heldout', 'name': 'bumped',
                                '__call__': lambda self, p: {
                                    'accuracy': held(p)['accuracy'] + bump[len(steps) * 3]}})()
  steps = []
  stopper = in_loop.EarlyStopping(monitor=monitor, metric='accuracy', patience=5,
                                  on_improvement={'validation': dev}, keep_best_params=True)

  def callback(step, params):
    steps.append(step)
    return stopper(step, params)

  trainer.train(model=model, model_dir=str(tmp_path), total_steps=12,
                optimizer=optimizers.create_optimizer(name='adamw', learning_rate=sched),
                learning_rate_fn=sched, train_dataset_fn=dataset_fn, log_period=3, eval_period=3,
                eval_callback=callback)
  assert steps == [3, 6, 9, 12] and dev.calls == 0  # nothing scored on dev during training
  best = stopper.score_best()
  assert best['step'] == 6 and dev.calls == 1 and stopper.history[1] is best
  # The kept params are step 6's: they reproduce its held-out score (the run went on to 12).
  assert -best['heldout/accuracy'] + 100.0 == pytest.approx(-held(stopper.best_params)['accuracy'])
  assert best['validation/accuracy'] == dev(stopper.best_params)['accuracy']
  with pytest.raises(ValueError, match='needs keep_best_params=True'):
    in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=1).score_best()
