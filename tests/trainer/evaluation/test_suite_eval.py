"""Evaluating downstream suite tasks (GLUE pair tasks from fixture files): encoder heads with the
task's official metrics, label words taken from the task, output names carrying the scoring mode
(two evaluations of one checkpoint never overwrite each other), and one table for a suite run."""
import io
import json
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax
import numpy as np
import pytest
from flax.core import meta

import downstream_fixtures as fx
from tasks import vocab as vocab_lib
from tasks.downstream import glue
from trainer.checkpoint import checkpoints
from trainer.evaluation import evaluate as eval_lib
from trainer.evaluation import suite
from trainer.model.config import EncoderDecoderConfig, TransformerConfig
from trainer.training import encoder_models
from trainer.training import models


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('suite')
  vocab = fx.write_vocab(str(root))
  data = fx.write_glue(str(root / 'glue'), n_train=8, n_dev=10)
  glue.register_glue_tasks(data_dir=data, vocabulary=vocab,
                           benchmarks=[glue.COLA, glue.RTE, glue.STSB])
  return {'root': root, 'vocab_size': vocab_lib.get_vocabulary(vocab).vocab_size}


def _cfg(vocab_size):
  return TransformerConfig(vocab_size=vocab_size, embed_dim=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16, mlp_dim=64, query_pre_attn_scalar=16,
                           sliding_window=8)


def _save(model, batch, path):
  first = {k: np.asarray(v)[:1] for k, v in batch.items()}
  checkpoints.save_params(str(path), meta.unbox(model.init(jax.random.PRNGKey(0), first)))
  return str(path)


def test_encoder_heads_get_the_official_metrics(setup):
  root, vs = setup['root'], setup['vocab_size']
  cola = encoder_models.EncoderClassifierModel(config=_cfg(vs))
  ckpt = _save(cola, {'encoder_input_tokens': np.ones((1, 32), np.int32)}, root / 'cola')
  out = io.StringIO()
  results, table = suite.evaluate_suite(runs=[
      dict(model=cola, checkpoint_path=ckpt, mixture_or_task_name='glue_cola_classification',
           task_feature_lengths={'inputs': 32}),
      dict(model=cola, checkpoint_path=ckpt, mixture_or_task_name='glue_rte_classification',
           task_feature_lengths={'inputs': 32}),
  ], defaults=dict(batch_size=4, output_dir=str(root / 'eval')), stream=out)
  assert set(results['glue_cola_classification']) >= {'matthews_corrcoef', 'accuracy', 'f1'}
  assert (root / 'eval' / 'eval_glue_rte_classification_validation_task_classifier_head.json'
          ).exists()
  printed = out.getvalue()
  assert table in printed and printed.count('GLUE average') == 1
  avg = float(table.splitlines()[-1].split()[-1])
  assert avg == pytest.approx((results['glue_cola_classification']['matthews_corrcoef'] +
                               results['glue_rte_classification']['accuracy']) / 2, abs=0.01)


def test_two_scorings_of_one_checkpoint_write_two_files(setup):
  root, vs = setup['root'], setup['vocab_size']
  cfg = _cfg(vs)
  model = models.EncoderDecoderModel(config=EncoderDecoderConfig(encoder=cfg, decoder=cfg))
  ckpt = _save(model, {'encoder_input_tokens': np.ones((1, 64), np.int32),
                       'decoder_input_tokens': np.ones((1, 8), np.int32),
                       'decoder_target_tokens': np.ones((1, 8), np.int32),
                       'decoder_loss_weights': np.ones((1, 8), np.int32)}, root / 'encdec')
  # 'not_entailment' is 15 tokens with EOS in this small vocabulary: targets must hold it.
  lengths = {'inputs': 64, 'targets': 16}
  common = dict(model=model, checkpoint_path=ckpt, mixture_or_task_name='glue_rte_text_to_text',
                task_feature_lengths=lengths, batch_size=5, stream=io.StringIO())
  # No LABEL_WORDS: the task's declared label list is used.
  words = eval_lib.evaluate(scoring_method='label_words', **common)
  greedy = eval_lib.evaluate(scoring_method='greedy_decode', max_decode_length=2, **common)
  out = os.path.join(ckpt, 'eval')
  a = json.load(open(os.path.join(out, 'eval_glue_rte_text_to_text_validation_task_label_words.json')))
  b = json.load(open(os.path.join(out,
                                  'eval_glue_rte_text_to_text_validation_task_greedy_decode.json')))
  assert a['scoring'] == 'label_words' and b['scoring'] == 'greedy_decode'
  assert a['metrics'] == pytest.approx(words['metrics'])
  assert b['metrics'] == pytest.approx(greedy['metrics'])
  # Label-word scoring always names a label: accuracy is a multiple of 10 over 10 examples.
  assert words['num_examples'] == 10 and words['metrics']['accuracy'] % 10 == pytest.approx(0)
  # A list of tasks (one generative checkpoint, GLUE-wide): each evaluated, one table printed.
  out = io.StringIO()
  both = eval_lib.evaluate(**dict(common, mixture_or_task_name=['glue_rte_text_to_text',
                                                                 'glue_cola_text_to_text'],
                                  stream=out))
  assert both['results']['glue_rte_text_to_text']['metrics'] == pytest.approx(words['metrics'])
  cola = both['results']['glue_cola_text_to_text']['metrics']
  assert 'matthews_corrcoef' in cola
  assert out.getvalue().count('GLUE average (2 tasks)') == 1
  assert both['table'].splitlines()[-1].split()[-1] == (
      f"{(cola['matthews_corrcoef'] + words['metrics']['accuracy']) / 2:.2f}")


def test_ranking_head_on_msmarco_candidates(setup):
  """The ranking task feeds the encoder's ranking head; MRR@10 / Recall@k come per query."""
  from tasks.downstream import metrics as metrics_lib
  from tasks.downstream import ranking
  from trainer.model import heads
  root, vs = setup['root'], setup['vocab_size']
  data = fx.write_msmarco(str(root / 'msmarco'))
  ranking.register_ranking_tasks(data_dir=data, vocabulary=str(root / 'spm.model'))
  model = encoder_models.EncoderClassifierModel(
      config=_cfg(vs), head=heads.HeadConfig(kind='ranking', ranking_loss='listwise'))
  ckpt = _save(model, {'encoder_input_tokens': np.ones((1, 32), np.int32),
                       'label': np.zeros((1, 1), np.int32),
                       'query_id': np.zeros((1, 1), np.int32)}, root / 'rank')
  r = eval_lib.evaluate(model=model, checkpoint_path=ckpt,
                        mixture_or_task_name='msmarco_passage_ranking',
                        task_feature_lengths={'inputs': 32}, batch_size=8, stream=io.StringIO())
  cols = ranking.build_split(data_dir=data, files=ranking.DEFAULT_SPLITS['validation'],
                             collection='collection.tsv', train=False, num_negatives=0, seed=0)
  assert r['num_examples'] == len(cols['label'])
  assert set(r['metrics']) == {'mrr@10', 'recall@10', 'recall@100'}
  # Every candidate set has 8 passages, so the top 10 / 100 hold all of each query's relevant ones.
  assert r['metrics']['recall@10'] == pytest.approx(100.0)
  assert 0.0 < r['metrics']['mrr@10'] <= 100.0
