"""Small downstream data sets in the real files' exact layouts (GLUE TSV, SuperGLUE JSONL,
MS MARCO passage-ranking TSV), written by tests into a temporary folder, plus a tiny vocabulary.

Sentences are built from a fixed word list with a seeded generator, so every run writes the same
bytes. Labels are a simple function of the text (so a model can learn them in a few steps):
a pair is 'entailment' / equivalent / duplicate when the second text repeats the first's first
word.
"""
import json
import os
import random

WORDS = ('the cat dog bird sat ran on under mat tree house red blue green small big quick slow '
         'man woman child saw ate took book car road river hill day night sun moon').split()


LABEL_WORDS = ('entailment not_entailment neutral contradiction acceptable unacceptable '
               'positive negative equivalent not_equivalent duplicate not_duplicate True False '
               'choice1 choice2 premise hypothesis sentence1 sentence2 question passage').split()


def sentence(rng, n=None):
  return ' '.join(rng.choice(WORDS) for _ in range(n or rng.randint(4, 12))).capitalize() + ' .'


def pair(rng, related):
  a = sentence(rng)
  first = a.split()[0].lower()
  b = sentence(rng)
  if related:
    b = first.capitalize() + ' ' + b.lower()
  else:
    b = ' '.join(w for w in b.split() if w.lower() != first) or 'Sun .'
  return a, b


def write_vocab(root, *, reserved_pieces=0):
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  text = os.path.join(root, 'vocab_text.txt')
  with open(text, 'w') as f:
    f.write('\n'.join(sentence(rng) for _ in range(3000)) + '\n')
    f.write((' '.join(LABEL_WORDS) + ' What was the cause ? effect ? 0123456789 .\n') * 20)
    f.write(''.join(chr(c) for c in range(33, 127)) + '\n')
  kw = (dict(num_sentinels=0, reserved_pieces=reserved_pieces) if reserved_pieces
        else dict(num_sentinels=10))
  model, _ = vocab_lib.train_vocabulary(
      input_files=[text], vocab_size=80, byte_fallback=False, output_prefix=os.path.join(
          root, 'spm_reserved' if reserved_pieces else 'spm'), **kw)
  return model


def _write(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(l + '\n' for l in lines))


NLI2 = ('entailment', 'not_entailment')


def write_glue(root, n_train=32, n_dev=16, seed=0):
  """All nine GLUE tasks' train/dev files (MNLI: train, dev_matched, dev_mismatched)."""
  rng = random.Random(seed)
  for split, n in (('train', n_train), ('dev', n_dev)):
    # CoLA: no header; source, label, original label ('*' when unacceptable), sentence.
    lines = []
    for i in range(n):
      y = i % 2
      s = sentence(rng) if y else 'Quick ' + sentence(rng)
      lines.append(f'gj04\t{y}\t{"" if y else "*"}\t{s}')
    _write(f'{root}/CoLA/{split}.tsv', lines)
    _write(f'{root}/SST-2/{split}.tsv', ['sentence\tlabel'] + [
        f'{sentence(rng).lower()}\t{i % 2}' for i in range(n)])
    lines = ['Quality\t#1 ID\t#2 ID\t#1 String\t#2 String']
    for i in range(n):
      a, b = pair(rng, i % 2)
      lines.append(f'{i % 2}\t{1000 + i}\t{2000 + i}\t{a}\t{b}')
    _write(f'{root}/MRPC/{split}.tsv', lines)
    lines = ['index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2'
             '\tscore']
    for i in range(n):
      a, b = pair(rng, i % 2)
      score = 5.0 * (i % 2) * 0.8 + 0.2 * (i % 5) * 0.5
      lines.append(f'{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}'
                   f'\t{score:.3f}')
    _write(f'{root}/STS-B/{split}.tsv', lines)
    lines = ['id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate']
    for i in range(n):
      a, b = pair(rng, i % 2)
      lines.append(f'{i}\t{2 * i}\t{2 * i + 1}\t{a[:-2]} ?\t{b[:-2]} ?\t{i % 2}')
    _write(f'{root}/QQP/{split}.tsv', lines)
    for name, rel in (('QNLI', ('question', 'sentence')), ('RTE', ('sentence1', 'sentence2')),
                      ('WNLI', ('sentence1', 'sentence2'))):
      lines = [f'index\t{rel[0]}\t{rel[1]}\tlabel']
      for i in range(n):
        a, b = pair(rng, i % 2 == 0)
        label = (NLI2[i % 2] if name != 'WNLI' else str(1 - i % 2))
        lines.append(f'{i}\t{a}\t{b}\t{label}')
      _write(f'{root}/{name}/{split}.tsv', lines)
  mnli_labels = ('entailment', 'neutral', 'contradiction')
  for fname, n, extra in (('train', n_train, 1), ('dev_matched', n_dev, 5),
                          ('dev_mismatched', n_dev, 5)):
    header = ['index', 'promptID', 'pairID', 'genre', 'sentence1_binary_parse',
              'sentence2_binary_parse', 'sentence1_parse', 'sentence2_parse', 'sentence1',
              'sentence2'] + [f'label{k + 1}' for k in range(extra)] + ['gold_label']
    lines = ['\t'.join(header)]
    for i in range(n):
      a, b = pair(rng, i % 3 == 0)
      y = mnli_labels[i % 3]
      lines.append('\t'.join([str(i), str(i), f'{i}e', 'fiction', '( x )', '( y )', '(ROOT x)',
                              '(ROOT y)', a, b] + [y] * extra + [y]))
    _write(f'{root}/MNLI/{fname}.tsv', lines)
  return root


def write_superglue(root, n_train=24, n_dev=12, seed=0):
  rng = random.Random(seed)
  for split, n in (('train', n_train), ('val', n_dev)):
    rows = {'BoolQ': [], 'CB': [], 'COPA': [], 'RTE': [], 'WiC': [], 'MultiRC': []}
    for i in range(n):
      a, b = pair(rng, i % 2 == 0)
      rows['BoolQ'].append({'question': b[:-2].lower(), 'passage': a, 'idx': i,
                            'label': i % 2 == 0})
      rows['CB'].append({'premise': a, 'hypothesis': b, 'idx': i,
                         'label': ('entailment', 'contradiction', 'neutral')[i % 3]})
      rows['COPA'].append({'premise': a, 'choice1': sentence(rng), 'choice2': b, 'idx': i,
                           'question': ('cause', 'effect')[i % 2], 'label': i % 2})
      rows['RTE'].append({'premise': a, 'hypothesis': b, 'idx': i, 'label': NLI2[i % 2]})
      word = a.split()[1]
      rows['WiC'].append({'word': word, 'sentence1': a, 'sentence2': b, 'idx': i,
                          'start1': 0, 'end1': 3, 'start2': 0, 'end2': 3, 'label': i % 2 == 1})
      rows['MultiRC'].append({'idx': i, 'version': 1.1, 'passage': {'text': a, 'questions': [
          {'idx': q, 'question': sentence(rng)[:-2] + ' ?', 'answers': [
              {'idx': k, 'text': sentence(rng, 3), 'label': (i + q + k) % 2} for k in range(3)]}
          for q in range(2)]}})
    for name, items in rows.items():
      _write(f'{root}/{name}/{split}.jsonl', [json.dumps(r) for r in items])
  return root


def write_msmarco(root, n_passages=60, n_train_q=6, n_dev_q=4, candidates=8, seed=0):
  rng = random.Random(seed)
  pids = [7000 + 3 * i for i in range(n_passages)]
  _write(f'{root}/collection.tsv', [f'{p}\t{sentence(rng)}' for p in pids])
  for split, nq, qid0 in (('train', n_train_q, 100), ('dev', n_dev_q, 900)):
    qs, qrels = [], []
    for k in range(nq):
      qid = qid0 + 7 * k
      qs.append(f'{qid}\t{sentence(rng)[:-2].lower()} ?')
      for p in rng.sample(pids, 1 + k % 2):
        qrels.append(f'{qid}\t0\t{p}\t1')
    _write(f'{root}/queries.{split}.tsv', qs)
    _write(f'{root}/qrels.{split}.tsv', qrels)
  # top1000.dev layout: qid, pid, query, passage; each dev query's positives plus random others.
  texts = dict(l.split('\t') for l in open(f'{root}/collection.tsv').read().splitlines())
  queries = dict(l.split('\t') for l in open(f'{root}/queries.dev.tsv').read().splitlines())
  lines = []
  rel = {}
  for l in open(f'{root}/qrels.dev.tsv').read().splitlines():
    q, _, p, _ = l.split('\t')
    rel.setdefault(q, []).append(int(p))
  for q in queries:
    cands = rel.get(q, []) + [p for p in rng.sample(pids, candidates) if p not in rel.get(q, [])]
    rng.shuffle(cands)
    lines += [f'{q}\t{p}\t{queries[q]}\t{texts[str(p)]}' for p in cands[:candidates]]
  _write(f'{root}/top1000.dev.tsv', lines)
  return root
