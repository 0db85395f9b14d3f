"""Parity of the pair forms with the reference implementations: longest-first truncation against
`transformers`' own `truncate_sequences`, and the text-to-text form against t5's GLUE
preprocessors (`t5.data.preprocessors.glue`, `.stsb`), including STS-B's rounded numeric target."""
import itertools
import types

import numpy as np
import tensorflow as tf
from t5.data import preprocessors as t5_preprocessors

from tasks.downstream import pairs


def test_longest_first_matches_transformers():
  from transformers.tokenization_python import PythonBackend
  hf_self = types.SimpleNamespace(truncation_side='right')
  cases = [(la, lb, budget) for la, lb, budget in itertools.product(range(1, 14), range(1, 14),
                                                                    range(2, 20))]
  la, lb, budget = (tf.constant(x, tf.int32) for x in zip(*cases))
  ka, kb = pairs.kept_lengths(la, lb, budget)
  for (a, b, n), got_a, got_b in zip(cases, ka.numpy().tolist(), kb.numpy().tolist()):
    ids, pair_ids, _ = PythonBackend.truncate_sequences(
        hf_self, list(range(a)), list(range(100, 100 + b)),
        num_tokens_to_remove=max(0, a + b - n), truncation_strategy='longest_first')
    assert (got_a, got_b) == (len(ids), len(pair_ids)), (a, b, n)


def _t2t(ds, **kw):
  return [{k: v.decode() for k, v in ex.items()}
          for ex in pairs.text_to_text(ds, **kw).as_numpy_iterator()]


def test_text_to_text_matches_t5_glue_preprocessor():
  rows = {'sentence1': ['A cat sat .', 'The dog ran .'], 'sentence2': ['A cat .', 'Sun .'],
          'label': [0, 1]}
  names = ['entailment', 'not_entailment']
  ours = _t2t(tf.data.Dataset.from_tensor_slices(rows), prefix='rte',
              fields=[('sentence1', 'sentence1'), ('sentence2', 'sentence2')], label_names=names)
  ref = t5_preprocessors.glue(tf.data.Dataset.from_tensor_slices(rows), benchmark_name='rte',
                              label_names=names, feature_names=['sentence1', 'sentence2'],
                              id_key=None)
  ref = [{k: v.decode() for k, v in ex.items()} for ex in ref.as_numpy_iterator()]
  assert ours == ref
  scores = np.array([0.0, 1.23, 2.5, 3.84, 4.9, 5.0], np.float32)
  rows = {'sentence1': ['a'] * 6, 'sentence2': ['b'] * 6}
  ours = _t2t(tf.data.Dataset.from_tensor_slices(dict(rows, score=scores)), prefix='stsb',
              fields=[('sentence1', 'sentence1'), ('sentence2', 'sentence2')], label_names=None)
  ref = t5_preprocessors.stsb(tf.data.Dataset.from_tensor_slices(
      dict(rows, label=scores, idx=np.arange(6))))
  ref = [{k: v.decode() for k, v in ex.items() if k != 'idx'} for ex in ref.as_numpy_iterator()]
  assert ours == ref
  # tf.round rounds half to even: 2.5 * 5 = 12.5 -> 12 -> '2.4', as in T5.
  assert [e['targets'] for e in ours] == ['0.0', '1.2', '2.4', '3.8', '4.8', '5.0']
