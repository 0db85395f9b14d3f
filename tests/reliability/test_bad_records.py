"""Guarantee: a bad input record is a counted dead letter (Beam) or dropped (on the fly), and no
valid document is lost, whatever the record class: lone surrogates, byte order marks, NULs, CRLF,
invalid UTF-8, malformed or partial JSON, wrong types, empty and too-long documents.

The check is a token multiset: with a byte vocabulary, the multiset of target ids of all examples
equals that of the valid documents (bytes + 3, one EOS each), through the real cache command and
through seqio on the fly.
"""
import collections
import json
import os
import textwrap

from tests.reliability import conftest as rel

# (raw JSONL line, dead-letter reason); documents themselves are valid except these.
BAD_JSONL = [
    (b'{"text": "a \\ud800 b"}', 'invalid_text'),        # lone surrogate (valid JSON)
    (b'{"text": "x \\udfff"}', 'invalid_text'),
    (b'{"text": "caf\xe9 au lait"}', 'invalid_utf8'),
    (b'{"text": "unterminated', 'malformed_json'),         # partial JSON
    (b'[1, 2, 3]', 'malformed_json'),
    (b'{"body": "no text field"}', 'missing_field'),
    (b'{"text": 42}', 'missing_field'),                    # wrong type
    (b'{"text": "   "}', 'empty'),
    (b'{"text": "\\u0000"}', 'empty'),                      # NUL only... is not whitespace
    (json.dumps({'text': 'y' * 2500}).encode(), 'too_long'),
]
# A NUL-only document is not blank (str.strip keeps it): it is a valid one-token document.
BAD_JSONL = [(raw, reason) for raw, reason in BAD_JSONL if reason != 'empty' or b'u0000' not in raw]


def _jsonl_corpus(path, *, bom=True, crlf=True):
  """Valid documents interleaved with every bad class; a BOM first and CRLF line ends."""
  good = rel.good_docs()
  good[3] = good[3] + ' with a NUL \x00 inside'
  lines = []
  for i, doc in enumerate(good):
    lines.append(json.dumps({'text': doc}).encode())
    if i < len(BAD_JSONL):
      lines.append(BAD_JSONL[i][0])
  data = (b'\r\n' if crlf else b'\n').join(lines) + b'\n'
  path.write_bytes((b'\xef\xbb\xbf' if bom else b'') + data)
  return good


def _expected_ids(docs):
  ids = collections.Counter()
  for doc in docs:
    ids.update(b + 3 for b in doc.encode('utf-8'))
    ids[1] += 1  # EOS
  return ids


def _cache_ids(out_dir, task):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ids = collections.Counter()
  for raw in rel.read_cache_targets(out_dir, task=task, lengths_name='tg512'):
    ex = tf.train.Example.FromString(raw)
    ids.update(ex.features.feature['targets'].int64_list.value)
  return ids


def test_cache_job_dead_letters_every_bad_class_and_keeps_every_valid_document(tmp_path, task_env):
  corpus = tmp_path / 'docs.jsonl'
  good = _jsonl_corpus(corpus)
  text = tmp_path / 'docs.txt'  # a text file with a BOM and CRLF: the BOM is not a token
  good_text = rel.good_docs(8)
  text.write_bytes(b'\xef\xbb\xbf' + '\r\n'.join(good_text).encode() + b'\r\n')
  out = tmp_path / 'cache'
  proc = rel.cache_job(out, task_env(jsonl_file=corpus, text_file=text), task='rel.*_lm',
                       lengths='targets:512')
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  letters = rel.dead_letters(out, lengths_name='tg512')
  assert collections.Counter(d['reason'] for d in letters) == collections.Counter(
      r for _, r in BAD_JSONL)
  assert _cache_ids(out, 'reljsonl_lm') == _expected_ids(good)  # the BOM'd first doc included
  assert _cache_ids(out, 'reltext_lm') == _expected_ids(good_text)
  assert not os.path.exists(out / '.progress')  # no empty progress folder left behind


ON_THE_FLY = textwrap.dedent('''
    import collections, json, sys
    import seqio
    import rel_tasks
    task = seqio.get_mixture_or_task(sys.argv[1])
    ids = collections.Counter()
    for ex in task.get_dataset({"targets": 512}, split="train", shuffle=False).as_numpy_iterator():
      ids.update(int(i) for i in ex["targets"])
    print(json.dumps(ids))
''')


def test_on_the_fly_source_drops_the_same_records_and_exits(tmp_path, task_env):
  corpus = tmp_path / 'docs.jsonl'
  good = _jsonl_corpus(corpus)
  (tmp_path / 'read_task.py').write_text(ON_THE_FLY)
  env = task_env(jsonl_file=corpus)
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  proc = subprocess.run([sys.executable, str(tmp_path / 'read_task.py'), 'reljsonl_lm'], env=env,
                        cwd=rel.REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = collections.Counter({int(k): v for k, v in json.loads(proc.stdout.splitlines()[-1]).items()})
  assert got == _expected_ids(good)


def test_inspect_task_on_a_surrogate_record_exits_cleanly(tmp_path, task_env):
  corpus = tmp_path / 'docs.jsonl'
  corpus.write_bytes(b'{"text": "a \\ud800 b"}\n{"text": "fine document"}\n')
  proc = rel.run_cmd(['pipelines.inspect_task', 'reljsonl_lm', '--module_import=rel_tasks',
                      '--feature_lengths=targets:64', '--n=3'], task_env(jsonl_file=corpus),
                     timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'fine document' in proc.stdout and 'InternalError' not in proc.stderr
