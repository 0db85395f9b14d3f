"""MS MARCO-style passage ranking from local TSV files, for the encoder's ranking heads.

Files (MS MARCO passage ranking layout, tab-separated, no header):
  collection.tsv        pid \t passage
  queries.<split>.tsv   qid \t query
  qrels.<split>.tsv     qid \t 0 \t pid \t relevance      (TREC qrels)
  candidates (eval)     qid \t pid [\t ...]                (top1000.dev: qid pid query passage;
                                                            or a run file: qid pid rank)
Splits (`RankingFiles`): `train` = each (query, relevant passage) gives one group of 1 +
`num_negatives` examples: the positive, then negatives sampled (seeded by seed, qid and pid) from
the query's candidates when a candidate file is given, else from the whole collection, never a
judged-relevant passage (a pool too small gives fewer);
`validation` = every (query, candidate) pair of the candidate file, labelled from the qrels.
A query's examples are consecutive and share `query_id` (the qid), which the listwise head
groups on; MRR@10 and Recall@k are computed per query over its candidates.

Task `msmarco_passage_ranking` (encoder form; the pair is (query, passage)):
  {'query': 'what is a cat', 'passage': 'A cat is ...', 'label': 1, 'query_id': 1185869}
  -> {'inputs': query tokens + [SEP] + passage tokens + EOS, 'label': 1, 'query_id': 1185869}
Fine-tune with `HeadConfig(kind='ranking', ranking_loss='pointwise' | 'listwise')`. Listwise
training needs each group whole in one batch: train unshuffled
(`--gin.train/data.DatasetConfig.shuffle=False`) with a batch size that is a multiple of
1 + num_negatives; pointwise training can shuffle.
"""
import dataclasses
import functools
import os
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from tasks.downstream import rows

MSMARCO_DIR_ENV = 'GEMMA_ADAPT_MSMARCO_DIR'
DEFAULT_MSMARCO_DIR = os.path.join('~', '.cache', 'gemma_adapt', 'msmarco')


@dataclasses.dataclass(frozen=True)
class RankingFiles:
  """File names (under the data dir) of one split; `candidates=None` on train samples negatives
  from the collection; on evaluation splits candidates are required."""
  queries: str
  qrels: str
  candidates: Optional[str] = None


DEFAULT_SPLITS = {
    'train': RankingFiles('queries.train.tsv', 'qrels.train.tsv'),
    'validation': RankingFiles('queries.dev.tsv', 'qrels.dev.tsv', 'top1000.dev.tsv'),
}


def _tsv(path: str, min_fields: int, names: Sequence[str]):
  """(line number, fields) of a header-less TSV; one-line errors naming file and line."""
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip('\n').rstrip('\r')
      if not line:
        continue
      fields = line.split('\t')
      if len(fields) < min_fields:
        raise rows.DataError(f'{path}:{n}: missing column {names[len(fields)]!r} '
                             f'({len(fields)} fields, expected {min_fields})')
      yield n, fields


def _int(value: str, name: str, path: str, n: int) -> int:
  try:
    return int(value)
  except ValueError:
    raise rows.DataError(f'{path}:{n}: {name} {value!r} is not an integer') from None


def read_queries(path: str) -> Dict[int, str]:
  return {_int(f[0], 'qid', path, n): rows.text_value(f[1], name='query', path=path, line=n)
          for n, f in _tsv(path, 2, ('qid', 'query'))}


def read_qrels(path: str) -> Dict[int, Dict[int, int]]:
  out: Dict[int, Dict[int, int]] = {}
  for n, f in _tsv(path, 4, ('qid', 'iteration', 'pid', 'relevance')):
    out.setdefault(_int(f[0], 'qid', path, n), {})[_int(f[2], 'pid', path, n)] = _int(
        f[3], 'relevance', path, n)
  return out


def read_candidates(path: str) -> Dict[int, List[int]]:
  out: Dict[int, List[int]] = {}
  for n, f in _tsv(path, 2, ('qid', 'pid')):
    pids = out.setdefault(_int(f[0], 'qid', path, n), [])
    pid = _int(f[1], 'pid', path, n)
    if pid not in pids:
      pids.append(pid)
  return out


def read_collection(path: str, wanted: Optional[set] = None) -> Tuple[List[int], Dict[int, str]]:
  """All pids (file order) and the texts of the `wanted` pids (all when None)."""
  pids, texts = [], {}
  for n, f in _tsv(path, 2, ('pid', 'passage')):
    pid = _int(f[0], 'pid', path, n)
    pids.append(pid)
    if wanted is None or pid in wanted:
      texts[pid] = rows.text_value(f[1], name='passage', path=path, line=n)
  return pids, texts


def build_split(*, data_dir: str, files: RankingFiles, collection: str, train: bool,
                num_negatives: int, seed: int) -> Dict[str, list]:
  """Columns {'query', 'passage', 'label', 'query_id'} of one split (see the module doc)."""
  join = functools.partial(os.path.join, data_dir)
  queries = read_queries(join(files.queries))
  qrels = read_qrels(join(files.qrels))
  candidates = read_candidates(join(files.candidates)) if files.candidates else None
  if candidates is None and not train:
    raise ValueError(f'ranking split with queries {files.queries!r} needs a candidates file')
  all_pids, _ = (read_collection(join(collection), wanted=set()) if candidates is None
                 else ([], {}))
  groups: List[Tuple[int, List[Tuple[int, int]]]] = []
  for qid in queries:
    rel = {p for p, r in qrels.get(qid, {}).items() if r > 0}
    if train:
      if not rel:
        continue
      pool = candidates.get(qid, []) if candidates is not None else all_pids
      for pos in sorted(rel):
        rng = random.Random(f'{seed}:{qid}:{pos}')
        negatives = []
        tries = 0
        while len(negatives) < num_negatives and tries < 20 * max(1, num_negatives) and pool:
          tries += 1
          p = pool[rng.randrange(len(pool))]
          if p not in rel and p not in negatives:
            negatives.append(p)
        groups.append((qid, [(pos, 1)] + [(p, 0) for p in negatives]))
    elif qid in candidates:
      groups.append((qid, [(p, 1 if p in rel else 0) for p in candidates[qid]]))
  wanted = {p for _, g in groups for p, _ in g}
  _, texts = read_collection(join(collection), wanted=wanted)
  missing = sorted(wanted - set(texts))
  if missing:
    raise rows.DataError(f'{join(collection)}: passage {missing[0]} (named in '
                         f'{files.qrels if train else files.candidates}) is not in the collection')
  out = {'query': [], 'passage': [], 'label': [], 'query_id': []}
  for qid, group in groups:
    for pid, label in group:
      out['query'].append(queries[qid])
      out['passage'].append(texts[pid])
      out['label'].append(label)
      out['query_id'].append(qid)
  return out


class RankingTable(rows.TableSource):
  """A TableSource whose split is built from several files (queries, qrels, candidates, collection)."""

  def __init__(self, *, data_dir: str, splits: Mapping[str, RankingFiles], collection: str,
               num_negatives: int, seed: int):
    split_files = {}
    for s, f in splits.items():
      split_files[s] = tuple(os.path.join(data_dir, x) for x in
                             (f.queries, f.qrels, f.candidates, collection) if x)
    super().__init__(split_files=split_files, reader=None, label='MS MARCO',
                     hint=f'data_dir={data_dir!r}; set data_dir= or ${MSMARCO_DIR_ENV}')
    self._args = dict(data_dir=data_dir, collection=collection, num_negatives=num_negatives,
                      seed=seed)
    self._splits = dict(splits)
    self._cache = {}

  def columns(self, split: str):
    paths = self.files(split)
    key = (split,) + tuple(rows._file_key(p) for p in paths)  # pylint: disable=protected-access
    if self._cache.get(split, (None,))[0] != key:
      self._cache[split] = (key, build_split(files=self._splits[split], train=(split == 'train'),
                                             **self._args))
    return self._cache[split][1]


def register_ranking_tasks(*, data_dir: Optional[str] = None, vocabulary=None,
                           splits: Mapping[str, RankingFiles] = DEFAULT_SPLITS,
                           collection: str = 'collection.tsv', num_negatives: int = 7,
                           seed: int = 0, name: str = 'msmarco_passage_ranking',
                           part_budget: Optional[Tuple[int, int]] = None,
                           overwrite: bool = True) -> Tuple[str, ...]:
  """Registers the encoder ranking task `name` (targets `label`, `query_id`); no I/O."""
  from tasks import pretraining  # pylint: disable=g-import-not-at-top
  from tasks.downstream import pairs  # pylint: disable=g-import-not-at-top
  if num_negatives < 0:
    raise ValueError(f'num_negatives={num_negatives} must be >= 0')
  data_dir = os.path.expanduser(data_dir or os.environ.get(MSMARCO_DIR_ENV)
                                or DEFAULT_MSMARCO_DIR)
  table = RankingTable(data_dir=data_dir, splits=splits, collection=collection,
                       num_negatives=num_negatives, seed=seed)
  return pairs.register_forms(
      name=name, source=table.as_seqio(), vocabulary=pretraining.as_vocabulary(vocabulary),
      prefix='', fields=(), first=('query',), second=('passage',), label_names=('0', '1'),
      t2t_postprocess=None, t2t_metrics=(), encoder_metrics=(), part_budget=part_budget,
      encoder_targets=('label', 'query_id'), overwrite=overwrite, forms=('encoder',),
      encoder_suffix='')
