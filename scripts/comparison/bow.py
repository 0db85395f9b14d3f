"""Bag-of-words logistic regression on SST-2 (NumPy + scipy.sparse): the sanity reference row.

  >>> acc = bow_accuracy(train=[('good fun', 1), ('dull mess', 0)], dev=[('fun', 1)])
"""
import re
from typing import List, Sequence, Tuple

import numpy as np

_WORD = re.compile(r"[a-z0-9']+")


def read_sst2_tsv(path: str, limit: int = 0) -> List[Tuple[str, int]]:
  """[(sentence, label)] from a GLUE SST-2 TSV (header `sentence\\tlabel`)."""
  rows = []
  with open(path, encoding='utf-8') as f:
    next(f)
    for line in f:
      sentence, label = line.rstrip('\n').rsplit('\t', 1)
      rows.append((sentence, int(label)))
      if limit and len(rows) >= limit:
        break
  return rows


def _features(rows, vocab):
  from scipy import sparse  # pylint: disable=g-import-not-at-top
  indptr, indices = [0], []
  for text, _ in rows:
    ids = sorted({vocab[w] for w in _WORD.findall(text.lower()) if w in vocab})
    indices += ids
    indptr.append(len(indices))
  data = np.ones(len(indices), np.float32)
  return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), len(vocab)))


def bow_accuracy(*, train: Sequence[Tuple[str, int]], dev: Sequence[Tuple[str, int]],
                 epochs: int = 1000, learning_rate: float = 8.0, l2: float = 1e-4) -> float:
  """Dev accuracy (%) of binary bag-of-words logistic regression trained by full-batch gradient
  descent (deterministic: no randomness)."""
  vocab = {}
  for text, _ in train:
    for w in _WORD.findall(text.lower()):
      vocab.setdefault(w, len(vocab))
  x, y = _features(train, vocab), np.array([l for _, l in train], np.float32)
  w, b = np.zeros(len(vocab), np.float32), 0.0
  for _ in range(epochs):
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    g = p - y
    w -= learning_rate * (x.T @ g / len(y) + l2 * w)
    b -= learning_rate * float(g.mean())
  xd, yd = _features(dev, vocab), np.array([l for _, l in dev])
  return float(100.0 * np.mean(((xd @ w + b) > 0).astype(int) == yd))
