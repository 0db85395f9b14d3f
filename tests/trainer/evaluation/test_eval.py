"""Evaluation: metrics, generative scoring consistent with the trainer's losses, end-to-end eval
(encoder head, label-word scoring through seqio's Evaluator, greedy decoding, LM perplexity),
JSON + TensorBoard outputs, and the command line."""
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from trainer.checkpoint import checkpoints
from trainer.training import encoder_models
from trainer.evaluation import evaluate as eval_lib
from trainer.evaluation import seqio_eval
from trainer.training import models
from trainer.evaluation import scoring
from trainer.model.config import EncoderDecoderConfig, TransformerConfig

N_TRAIN, N_DEV = 48, 24
TASK_MODULE = textwrap.dedent('''
    """SST-2 slices as seqio tasks for tests: text-to-text and classification forms."""
    import csv
    import functools
    import seqio
    import tensorflow as tf
    from t5.evaluation import metrics as t5_metrics
    from tasks import vocab as vocab_lib

    def _rows(path, n):
      with open(path) as f:
        rows = list(csv.DictReader(f, delimiter='\\t', quoting=csv.QUOTE_NONE))[:n]
      return [r['sentence'] for r in rows], [int(r['label']) for r in rows]

    def register(prefix, vocab_path, data_dir, n_train, n_dev):
      vocab = vocab_lib.get_vocabulary(vocab_path)
      data = {'train': _rows(f'{data_dir}/train.tsv', n_train),
              'validation': _rows(f'{data_dir}/dev.tsv', n_dev)}

      def dataset_fn(split, shuffle_files, seed=None):
        del shuffle_files, seed
        sentences, labels = data[split]
        return tf.data.Dataset.from_tensor_slices({'sentence': sentences, 'label': labels})

      source = seqio.FunctionDataSource(dataset_fn, splits=['train', 'validation'])

      @seqio.map_over_dataset
      def to_text(ex):
        return {'inputs': tf.strings.join(['sst2 sentence: ', ex['sentence']]),
                'targets': tf.where(ex['label'] > 0, 'positive', 'negative')}

      @seqio.map_over_dataset
      def to_classification(ex):
        return {'inputs': tf.strings.join(['sst2 sentence: ', ex['sentence']]),
                'label': ex['label']}

      feature = functools.partial(seqio.Feature, vocabulary=vocab, add_eos=True)
      for name in (f'{prefix}_t2t', f'{prefix}_cls'):
        if name in seqio.TaskRegistry.names():
          seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add(
          f'{prefix}_t2t', source=source,
          preprocessors=[to_text, seqio.preprocessors.tokenize,
                         seqio.preprocessors.append_eos_after_trim],
          output_features={'inputs': feature(), 'targets': feature()},
          metric_fns=[t5_metrics.accuracy])
      seqio.TaskRegistry.add(
          f'{prefix}_cls', source=source,
          preprocessors=[to_classification, seqio.preprocessors.tokenize,
                         seqio.preprocessors.append_eos_after_trim],
          output_features={'inputs': feature()})
    ''')


@pytest.fixture(scope='module')
def sst2(tmp_path_factory, shared_data):
  """Registers `ftest_t2t` / `ftest_cls` on a SentencePiece vocab trained from SST-2 sentences."""
  from tasks import vocab as vocab_lib
  root = tmp_path_factory.mktemp('sst2')
  lines = (shared_data / 'glue' / 'SST-2' / 'train.tsv').read_text().splitlines()[1:1500]
  (root / 'text.txt').write_text('\n'.join(l.split('\t')[0] for l in lines) + '\n')
  model_path, _ = vocab_lib.train_vocabulary(
      input_files=[str(root / 'text.txt')], vocab_size=400, output_prefix=str(root / 'spm'),
      num_sentinels=4, byte_fallback=False)
  (root / 'ftest_tasks.py').write_text(TASK_MODULE)
  sys.path.insert(0, str(root))
  import ftest_tasks  # pylint: disable=import-error
  data_dir = str(shared_data / 'glue' / 'SST-2')
  ftest_tasks.register('ftest', model_path, data_dir, N_TRAIN, N_DEV)
  return {'root': root, 'vocab': model_path, 'data_dir': data_dir,
          'vocab_size': vocab_lib.get_vocabulary(model_path).vocab_size}


def _cfg(vocab_size, **kw):
  base = dict(vocab_size=vocab_size, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
              head_dim=16, mlp_dim=64, query_pre_attn_scalar=16, sliding_window=8)
  base.update(kw)
  return TransformerConfig(**base)


def _init(model, batch, seed=0):
  first = {k: np.asarray(v)[:1] for k, v in batch.items()}
  return meta.unbox(model.init(jax.random.PRNGKey(seed), first))


# ---------------------------------------------------------------------------------------------
# Metrics.

def test_mrr_at_10_by_hand():
  # q1: relevant at rank 2 -> 1/2; q2: relevant at rank 1 -> 1; q3: no relevant -> skipped;
  # q4: relevant at rank 11 -> 0.
  qids = [1, 1, 1, 2, 2, 3] + [4] * 11
  scores = [0.9, 0.5, 0.1, 3.0, 1.0, 0.2] + [float(-i) for i in range(11)]
  labels = [0, 1, 0, 1, 0, 0] + [0] * 10 + [1]
  assert seqio_eval.mrr_at_k(qids, scores, labels, k=10) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_head_metrics_classification_and_regression():
  m = seqio_eval.head_metrics('classification', labels=[1, 0, 1, 1], predictions=[1, 0, 0, 1])
  assert m['accuracy'] == pytest.approx(75.0)
  assert m['f1'] == pytest.approx(100 * 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))
  m = seqio_eval.head_metrics('regression', labels=[1.0, 2.0, 3.0], predictions=[2.0, 4.0, 6.5])
  assert m['spearman_corrcoef'] == pytest.approx(100.0)
  assert 99.0 < m['pearson_corrcoef'] < 100.0


# ---------------------------------------------------------------------------------------------
# Scoring = the trainer's loss on the same example, laid out by seqio's own feature converters.

def _t2t_examples(sst2, n=4):
  import seqio
  ds = seqio.get_mixture_or_task('ftest_t2t').get_dataset(
      {'inputs': 48, 'targets': 8}, split='validation', shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def _model(kind, vocab_size):
  cfg = _cfg(vocab_size)
  if kind == 'decoder_only':
    return models.DecoderOnlyModel(config=cfg, prefix_lm=True)
  return models.EncoderDecoderModel(config=EncoderDecoderConfig(encoder=cfg, decoder=cfg))


@pytest.mark.parametrize('kind', ['decoder_only', 'encoder_decoder'])
def test_label_word_scores_equal_minus_trainer_loss(kind, sst2):
  """score_candidates lays out inputs + target exactly as seqio's converter does for training."""
  import seqio
  import tensorflow as tf
  examples = _t2t_examples(sst2, n=3)
  model = _model(kind, sst2['vocab_size'])
  ds = tf.data.Dataset.from_generator(
      lambda: ({'inputs': e['inputs'], 'targets': e['targets']} for e in examples),
      output_signature={'inputs': tf.TensorSpec([None], tf.int32),
                        'targets': tf.TensorSpec([None], tf.int32)})
  lengths = {'inputs': 48, 'targets': 8}
  train_conv = (seqio.PrefixLMFeatureConverter(pack=False) if kind == 'decoder_only'
                else seqio.EncDecFeatureConverter(pack=False))
  train_rows = next(train_conv(ds, lengths).batch(len(examples)).as_numpy_iterator())
  params = _init(model, train_rows)
  eval_rows = next(seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
                   .batch(len(examples)).as_numpy_iterator())
  # Candidates: every example's own target; the diagonal is each example's target score.
  scores = scoring.score_candidates(model, params, eval_rows,
                                    [e['targets'].tolist() for e in examples])
  loss_fn = jax.jit(model.loss_fn, static_argnums=2)
  for i in range(len(examples)):
    _, metrics = loss_fn(params, {k: v[i:i + 1] for k, v in train_rows.items()}, None)
    np.testing.assert_allclose(scores[i, i], -float(metrics['loss'][0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kind', ['decoder_only', 'encoder_decoder'])
def test_greedy_decoding_is_the_argmax_of_teacher_forcing(kind, sst2):
  model = _model(kind, sst2['vocab_size'])
  rng = np.random.default_rng(0)
  lengths = [5, 12, 8]
  inputs = np.zeros((3, 12), np.int32)
  for b, n in enumerate(lengths):
    inputs[b, :n] = rng.integers(5, sst2['vocab_size'], n)
  dummy = ({'decoder_input_tokens': inputs, 'decoder_target_tokens': inputs,
            'decoder_causal_attention': inputs} if kind == 'decoder_only' else
           {'encoder_input_tokens': inputs, 'decoder_input_tokens': inputs[:, :4],
            'decoder_target_tokens': inputs[:, :4]})
  params = _init(model, dummy, seed=3)
  decoded = scoring.greedy_decode(model, params, {'encoder_input_tokens': inputs},
                                  max_decode_length=4)
  # One teacher-forced pass of the trainer's forward over inputs + the decoded tokens: at every
  # position the argmax must be the token greedy decoding chose there.
  for b, ids in enumerate(decoded):
    assert 1 <= len(ids) <= 4
    x = inputs[b, :lengths[b]].tolist()
    if kind == 'decoder_only':
      seq = [0] + x + ids[:-1]
      batch = {'decoder_input_tokens': np.array([seq]),
               'decoder_target_tokens': np.array([x + ids]),
               'decoder_causal_attention': np.array([[1] * (len(x) + 1) + [0] * (len(ids) - 1)])}
      logits = model.compute_logits(params, batch)[0, len(x):]
    else:
      batch = {'encoder_input_tokens': np.array([x]), 'decoder_input_tokens': np.array([[0] + ids[:-1]]),
               'decoder_target_tokens': np.array([ids])}
      logits = model.compute_logits(params, batch)[0]
    assert np.asarray(jnp.argmax(logits, axis=-1)).tolist() == ids


# ---------------------------------------------------------------------------------------------
# End to end: checkpoint -> evaluate -> JSON + TensorBoard.

def _saved(model, batch, path, seed=0):
  params = _init(model, batch, seed)
  checkpoints.save_params(str(path), params)
  return params


def test_evaluate_encoder_classifier(sst2, tmp_path):
  model = encoder_models.EncoderClassifierModel(config=_cfg(sst2['vocab_size']), pooler='mean')
  batch = {'encoder_input_tokens': np.ones((1, 48), np.int32), 'label': np.zeros((1, 1), np.int32)}
  _saved(model, batch, tmp_path / 'ckpt')
  out = tmp_path / 'eval'
  result = eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'ckpt'),
                             mixture_or_task_name='ftest_cls', task_feature_lengths={'inputs': 48},
                             batch_size=10, output_dir=str(out))
  assert result['num_examples'] == N_DEV  # 24 = 10 + 10 + 4: no example dropped
  assert result['scoring'] == 'classifier_head'
  assert set(result['metrics']) == {'accuracy', 'f1'}
  saved = json.loads((out / 'eval_ftest_cls_validation_task_classifier_head.json').read_text())
  assert saved['metrics'] == pytest.approx(result['metrics'])
  assert glob.glob(str(out / 'tb' / 'events.out.tfevents.*'))


def test_evaluate_label_words_through_seqio_evaluator_matches_direct_scoring(sst2, tmp_path):
  import seqio
  cfg = _cfg(sst2['vocab_size'])
  model = models.EncoderDecoderModel(config=EncoderDecoderConfig(encoder=cfg, decoder=cfg))
  batch = {'encoder_input_tokens': np.ones((1, 48), np.int32),
           'decoder_input_tokens': np.ones((1, 8), np.int32),
           'decoder_target_tokens': np.ones((1, 8), np.int32),
           'decoder_loss_weights': np.ones((1, 8), np.int32)}
  params = _saved(model, batch, tmp_path / 'ckpt', seed=1)
  result = eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'ckpt'),
                             mixture_or_task_name='ftest_t2t',
                             task_feature_lengths={'inputs': 48, 'targets': 8},
                             scoring_method='label_words', label_words=['negative', 'positive'],
                             batch_size=8, output_dir=str(tmp_path / 'eval'))
  assert result['scoring'] == 'label_words' and result['num_examples'] == N_DEV
  # The same accuracy computed here, without seqio's Evaluator.
  task = seqio.get_mixture_or_task('ftest_t2t')
  cands = seqio_eval.label_word_candidates(task, ['negative', 'positive'])
  enc = seqio.EncDecFeatureConverter(pack=False)(
      task.get_dataset({'inputs': 48, 'targets': 8}, split='validation', shuffle=False),
      {'inputs': 48, 'targets': 8})
  rows = next(enc.batch(100).as_numpy_iterator())
  best = scoring.score_candidates(model, params, rows, cands).argmax(-1)
  truth = [cands.index([t for t in row if t]) for row in rows['decoder_target_tokens'].tolist()]
  assert result['metrics']['accuracy'] == pytest.approx(100.0 * np.mean(best == truth))
  # A targets length that cuts a label word (training would have seen it cut) is a named error.
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['targets'\]=2 is shorter than the "
                                       r"label word 'negative'"):
    eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'ckpt'),
                      mixture_or_task_name='ftest_t2t',
                      task_feature_lengths={'inputs': 48, 'targets': 2},
                      scoring_method='label_words', label_words=['negative', 'positive'],
                      batch_size=8, output_dir=str(tmp_path / 'eval2'))


def test_evaluate_greedy_decoding_and_lm_mode(sst2, tmp_path):
  import seqio
  model = models.DecoderOnlyModel(config=_cfg(sst2['vocab_size']), prefix_lm=True)
  batch = {'decoder_input_tokens': np.ones((1, 52), np.int32),
           'decoder_target_tokens': np.ones((1, 52), np.int32),
           'decoder_causal_attention': np.ones((1, 52), np.int32)}
  _saved(model, batch, tmp_path / 'ckpt', seed=2)
  result = eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'ckpt'),
                             mixture_or_task_name='ftest_t2t',
                             task_feature_lengths={'inputs': 48, 'targets': 8},
                             scoring_method='greedy_decode', max_decode_length=3, batch_size=8)
  assert result['scoring'] == 'greedy_decode'
  assert 0.0 <= result['metrics']['accuracy'] <= 100.0  # random model: (almost surely) 0
  lm = eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'ckpt'),
                         mixture_or_task_name='ftest_t2t', mode='lm',
                         task_feature_lengths={'inputs': 48, 'targets': 8}, batch_size=7,
                         output_dir=str(tmp_path / 'eval'))
  m = lm['metrics']
  task = seqio.get_mixture_or_task('ftest_t2t')
  targets = list(task.get_dataset({'inputs': 48, 'targets': 8}, split='validation',
                                  shuffle=False).as_numpy_iterator())
  assert m['target_tokens'] == sum(min(len(e['targets']), 8) for e in targets)
  assert m['perplexity'] == pytest.approx(np.exp(m['loss']), rel=1e-6)
  # A random model over a 400-piece vocabulary: loss near log(400), far from 0.
  assert 3.0 < m['loss'] < 12.0
  assert (tmp_path / 'eval' / 'eval_ftest_t2t_validation_lm_teacher_forced_lm.json').exists()


def test_bad_settings_are_named(sst2, tmp_path):
  model = models.DecoderOnlyModel(config=_cfg(sst2['vocab_size']), prefix_lm=True)
  with pytest.raises(ValueError, match="mode='perplexity'"):
    eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path), mixture_or_task_name='ftest_t2t',
                      task_feature_lengths={'inputs': 8, 'targets': 4}, mode='perplexity')
  with pytest.raises(ValueError, match='CHECKPOINT_PATH'):
    eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'nope'),
                      mixture_or_task_name='ftest_t2t',
                      task_feature_lengths={'inputs': 8, 'targets': 4})
  with pytest.raises(ValueError, match="'ftest_t2tt' is not a registered task"):
    eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path), mixture_or_task_name='ftest_t2tt',
                      task_feature_lengths={'inputs': 8, 'targets': 4})


def test_command_line(sst2, tmp_path):
  """`python -m trainer.eval` with the gin files, as docs/finetune_eval.md shows it."""
  # The shapes of gin/models/gemma2_tiny.gin, which gemma_encoder_tiny.gin reuses.
  tiny = _cfg(sst2['vocab_size'], embed_dim=64, num_heads=4, num_kv_heads=2, mlp_dim=128)
  model = encoder_models.EncoderClassifierModel(config=tiny)
  batch = {'encoder_input_tokens': np.ones((1, 32), np.int32)}
  _saved(model, batch, tmp_path / 'ckpt')
  reg = tmp_path / 'reg_tasks.py'
  reg.write_text(f'import ftest_tasks\nftest_tasks.register("ftest", {sst2["vocab"]!r}, '
                 f'{sst2["data_dir"]!r}, {N_TRAIN}, {N_DEV})\n')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sst2['root']), str(tmp_path),
                                                     eval_lib.__file__.rsplit('/trainer/', 1)[0]]))
  base = [sys.executable, '-m', 'trainer.eval', '--module_import=reg_tasks',
          '--gin_file=gin/models/gemma_encoder_tiny.gin', '--gin_file=gin/runs/eval.gin',
          f'--gin.VOCAB_SIZE={sst2["vocab_size"]}', '--gin.MIXTURE_OR_TASK_NAME="ftest_cls"',
          '--gin.TASK_FEATURE_LENGTHS={"inputs": 32}',
          f'--gin.CHECKPOINT_PATH="{tmp_path / "ckpt"}"',
          f'--gin.EVAL_OUTPUT_DIR="{tmp_path / "out"}"']
  proc = subprocess.run(base, capture_output=True, text=True, env=env,
                        cwd=eval_lib.__file__.rsplit('/trainer/', 1)[0], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'scoring=classifier_head' in proc.stdout
  saved = json.loads((tmp_path / 'out' / 'eval_ftest_cls_validation_task_classifier_head.json').read_text())
  assert saved['num_examples'] == N_DEV
  proc = subprocess.run(base + ['--gin.EVAL_MODE="bogus"'], capture_output=True,
                        text=True, env=env, timeout=300,
                        cwd=eval_lib.__file__.rsplit('/trainer/', 1)[0])
  assert proc.returncode == 2
  assert "mode='bogus'" in proc.stderr and 'Traceback' not in proc.stderr


# ---------------------------------------------------------------------------------------------
# In-loop evaluation (trainer.evaluation.in_loop).

@pytest.mark.parametrize('kind', ['classifier', 'decoder_only', 'encoder_decoder'])
def test_in_loop_scorer_equals_evaluate_of_the_checkpoint(kind, sst2, tmp_path):
  """TaskScorer on params in memory gives evaluate()'s metrics for the same params, saved."""
  from trainer.evaluation import in_loop
  vs = sst2['vocab_size']
  if kind == 'classifier':
    model = encoder_models.EncoderClassifierModel(config=_cfg(vs), pooler='mean')
    task, lengths, words = 'ftest_cls', {'inputs': 48}, None
    batch = {'encoder_input_tokens': np.ones((1, 48), np.int32),
             'label': np.zeros((1, 1), np.int32)}
  else:
    model = _model(kind, vs)
    task, lengths, words = 'ftest_t2t', {'inputs': 48, 'targets': 8}, ['negative', 'positive']
    batch = {'encoder_input_tokens': np.ones((1, 48), np.int32),
             'decoder_input_tokens': np.ones((1, 8), np.int32),
             'decoder_target_tokens': np.ones((1, 8), np.int32),
             'decoder_loss_weights': np.ones((1, 8), np.int32)}
    if kind == 'decoder_only':
      batch = {k: np.ones((1, 56), np.int32) for k in (
          'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights',
          'decoder_causal_attention')}
  params = _saved(model, batch, tmp_path / 'ckpt', seed=3)
  scorer = in_loop.TaskScorer(model=model, mixture_or_task_name=task, task_feature_lengths=lengths,
                              split='validation', label_words=words, batch_size=10)
  assert scorer.num_examples == N_DEV
  # 24 examples in batches of 10: the last batch padded with empty rows (one compiled shape).
  assert [len(b[next(iter(b))]) for b in scorer.batches] == [10, 10, 10]
  got = scorer(params)
  want = eval_lib.evaluate(model=model, checkpoint_path=str(tmp_path / 'ckpt'),
                           mixture_or_task_name=task, task_feature_lengths=lengths,
                           label_words=words, batch_size=8, output_dir=str(tmp_path / 'eval'))
  assert got == pytest.approx(want['metrics'])  # the task's metrics (ftest_t2t: accuracy only)
  assert 'accuracy' in got
  assert scorer(params) == got  # batches are kept, not consumed
  if kind != 'classifier':  # as evaluate: a label word cut by the targets length is an error
    with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['targets'\]=2"):
      in_loop.TaskScorer(model=model, mixture_or_task_name=task, split='validation',
                         task_feature_lengths={'inputs': 48, 'targets': 2}, label_words=words)


class _FakeScorer:
  def __init__(self, split, values):
    self.split, self.name, self.values, self.calls = split, f'fake_{split}', list(values), []

  def __call__(self, params):
    self.calls.append(params)
    return {'accuracy': self.values[len(self.calls) - 1]}


def test_early_stopping_patience_and_scoring_on_improvement_only():
  from trainer.evaluation import in_loop
  held = _FakeScorer('heldout', [50.0, 60.0, 55.0, 60.0, 70.0])
  dev = _FakeScorer('validation', [1.0, 2.0, 3.0])
  lines = []
  stopper = in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=2,
                                  on_improvement={'validation': dev}, log=lines.append)
  outs = [stopper(step, f'p{step}') for step in (10, 20, 30, 40)]
  # 50 (best) -> 60 (best) -> 55 -> 60 (a tie is no improvement): 2 without improvement: stop.
  assert [o['stop'] for o in outs] == [False, False, False, True]
  assert dev.calls == ['p10', 'p20']  # the dev set only where held-out improved
  assert stopper.best == {'step': 20, 'improved': True, 'heldout/accuracy': 60.0,
                          'validation/accuracy': 2.0}
  assert [h['step'] for h in stopper.history] == [10, 20, 30, 40]
  assert 'validation/accuracy' not in outs[2] and outs[1]['validation/accuracy'] == 2.0
  assert re.fullmatch(r'eval step 40: heldout/accuracy 60\.00 -> early stop \[\d+\.\d s\]',
                      lines[-1]), lines[-1]
  assert '(best)' in lines[1]
  with pytest.raises(ValueError, match="EarlyStopping.metric='f1' is not among the metrics"):
    in_loop.EarlyStopping(monitor=_FakeScorer('heldout', [1.0]), metric='f1', patience=1)(1, None)
  with pytest.raises(ValueError, match='EarlyStopping.patience must be a positive int'):
    in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=0)
  with pytest.raises(ValueError, match='EarlyStopping.start_step must be an int >= 0'):
    in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=1, start_step=-1)


def test_early_stopping_start_step_scores_early_rounds_without_counting_them():
  from trainer.evaluation import in_loop
  # The best is the first evaluation; the next ones up to start_step=30 do not use up patience.
  held = _FakeScorer('heldout', [60.0, 50.0, 52.0, 55.0, 58.0, 70.0])
  stopper = in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=2, start_step=30)
  outs = [stopper(step, None) for step in (10, 20, 30, 40, 50)]
  assert [o['stop'] for o in outs] == [False, False, False, False, True]
  assert stopper.best['step'] == 10
  # Without start_step the same run stops at step 30.
  held = _FakeScorer('heldout', [60.0, 50.0, 52.0])
  stopper = in_loop.EarlyStopping(monitor=held, metric='accuracy', patience=2)
  assert [stopper(step, None)['stop'] for step in (10, 20, 30)] == [False, False, True]
