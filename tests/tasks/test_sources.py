"""Corpora: the TF-free record API (ranges, parse rules) and the seqio DataSource agree."""
import json
import os
import pathlib
import random
import subprocess
import sys

import pytest

from tasks import sources

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def _all_records(spec, path):
  return list(spec.read_range(path, 0, None))


def _records_over_random_ranges(spec, path, rng, num_ranges):
  total = spec.unit_count(path)
  cuts = sorted(rng.randint(0, total) for _ in range(num_ranges - 1))
  bounds = [0] + cuts + [total]
  out = []
  for start, end in zip(bounds[:-1], bounds[1:]):
    out.extend(spec.read_range(path, start, end))
  return out


def _parse_all(spec, records):
  texts, reasons = [], []
  for _, raw in records:
    try:
      texts.append(spec.parse(raw))
    except sources.BadRecord as e:
      reasons.append(e.reason)
  return texts, reasons


def _source_texts(spec, split="train"):
  ds = spec.data_source().get_dataset(split=split, shuffle=False)
  return [ex["text"].decode("utf-8") for ex in ds.as_numpy_iterator()]


@pytest.fixture(scope="module")
def messy_text(shared_data, tmp_path_factory):
  """Shakespeare with CRLF lines, whitespace-only lines, invalid UTF-8, runs of blank lines."""
  lines = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:60_000].split(b"\n")
  rng = random.Random(0)
  out = []
  for i, line in enumerate(lines):
    r = rng.random()
    if r < 0.03:
      line = line + b"\xff\xfe"
    elif r < 0.06:
      out.append(b"   \t")
    elif r < 0.09:
      line = line + b"\r"
    out.append(line)
  path = tmp_path_factory.mktemp("text") / "messy.txt"
  path.write_bytes(b"\n".join(out))  # No trailing newline: the last record ends at EOF.
  return str(path)


@pytest.mark.parametrize("text_mode", ["line", "paragraph"])
def test_text_ranges_yield_every_record_exactly_once(messy_text, text_mode):
  spec = sources.CorpusSpec(name="messy", splits={"train": messy_text}, text_mode=text_mode)
  whole = _all_records(spec, messy_text)
  assert len(whole) > 100
  assert len({k for k, _ in whole}) == len(whole)
  rng = random.Random(1)
  for trial in range(25):
    got = _records_over_random_ranges(spec, messy_text, rng, rng.choice([2, 3, 7, 40, 300]))
    assert got == whole, f"trial {trial}"
  for n in (1, 5, 64):
    got = []
    for start, end in spec.split_ranges(messy_text, n):
      got.extend(spec.read_range(messy_text, start, end))
    assert got == whole


def test_text_records_and_parse_rules(messy_text):
  line = sources.CorpusSpec(name="messy", splits={"train": messy_text})
  para = sources.CorpusSpec(name="messy", splits={"train": messy_text}, text_mode="paragraph")
  with open(messy_text, "rb") as f:
    data = f.read()
  expected_lines = [l[:-1] if l.endswith(b"\r") else l for l in data.split(b"\n") if l.strip()]
  assert [raw for _, raw in _all_records(line, messy_text)] == expected_lines
  # Record keys are '<path>:<byte offset of the record's first byte>'.
  for key, raw in _all_records(line, messy_text)[:50]:
    offset = int(key.rsplit(":", 1)[1])
    assert data[offset:offset + len(raw)] == raw
  texts, reasons = _parse_all(line, _all_records(line, messy_text))
  assert set(reasons) == {"invalid_utf8"} and len(reasons) > 10
  assert all(t.strip() for t in texts)
  paragraphs = [raw for _, raw in _all_records(para, messy_text)]
  assert all(b"\n\n" not in p for p in paragraphs)
  assert len(paragraphs) < len(expected_lines)


def test_paragraph_mode_on_a_small_file(tmp_path):
  path = tmp_path / "p.txt"
  path.write_bytes(b"\n\nfirst para\nline two\n\n \n\nsecond\n\nthird\r\nmore\n")
  spec = sources.CorpusSpec(name="p", splits={"train": str(path)}, text_mode="paragraph")
  assert _all_records(spec, str(path)) == [
      (f"{path}:2", b"first para\nline two"), (f"{path}:26", b"second"),
      (f"{path}:34", b"third\nmore")]
  # A range starting inside a paragraph does not own it.
  assert list(spec.read_range(str(path), 3, 26)) == []
  assert list(spec.read_range(str(path), 3, 27)) == [(f"{path}:26", b"second")]


def test_jsonl_ranges_and_bad_record_reasons(tmp_path):
  rng = random.Random(2)
  lines, expected_reasons = [], []
  for i in range(400):
    r = rng.random()
    if r < 0.05:
      lines.append(b'{"text": "caf\xc3 broken"}'); expected_reasons.append("invalid_utf8")
    elif r < 0.10:
      lines.append(b'{"text": "unterminated'); expected_reasons.append("malformed_json")
    elif r < 0.13:
      lines.append(b'["a", "list"]'); expected_reasons.append("malformed_json")
    elif r < 0.18:
      lines.append(b'{"title": "no text"}'); expected_reasons.append("missing_field")
    elif r < 0.20:
      lines.append(b'{"text": 7}'); expected_reasons.append("missing_field")
    elif r < 0.25:
      lines.append(b'{"text": "  \\n "}'); expected_reasons.append("empty")
    elif r < 0.30:
      lines.append(json.dumps({"text": "x" * 500}).encode()); expected_reasons.append("too_long")
    else:
      lines.append(json.dumps({"text": f"doc {i}: \u00e9t\u00e9 " * rng.randint(1, 9)},
                              ensure_ascii=rng.random() < 0.5).encode())
      expected_reasons.append(None)
    if rng.random() < 0.05:
      lines.append(b"")  # Blank lines are skipped, not records.
  path = tmp_path / "d.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  spec = sources.CorpusSpec(name="d", format="jsonl", splits={"train": str(path)},
                            max_document_chars=400)
  whole = _all_records(spec, str(path))
  assert len(whole) == 400
  got_reasons = []
  for _, raw in whole:
    try:
      spec.parse(raw)
      got_reasons.append(None)
    except sources.BadRecord as e:
      got_reasons.append(e.reason)
  assert got_reasons == expected_reasons
  rng = random.Random(3)
  for _ in range(20):
    assert _records_over_random_ranges(spec, str(path), rng, rng.randint(2, 50)) == whole
  # The seqio face yields exactly the documents that parse.
  texts, _ = _parse_all(spec, whole)
  assert _source_texts(spec) == texts


def test_jsonl_nested_field(tmp_path):
  path = tmp_path / "n.jsonl"
  path.write_text('{"meta": {"body": "nested text"}}\n{"meta": "flat"}\n')
  spec = sources.CorpusSpec(name="n", format="jsonl", splits={"train": str(path)},
                            text_field="meta.body")
  records = _all_records(spec, str(path))
  assert spec.parse(records[0][1]) == "nested text"
  with pytest.raises(sources.BadRecord) as e:
    spec.parse(records[1][1])
  assert e.value.reason == "missing_field"


def _write_tfrecords(path, payloads):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.TFRecordWriter(str(path)) as w:
    for p in payloads:
      w.write(p)


def _example(**features):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feats = {}
  for k, v in features.items():
    if isinstance(v, bytes):
      feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
    else:
      feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def test_tfrecord_index_ranges_parse_and_source_agree(tmp_path):
  payloads, expected = [], []
  for i in range(120):
    kind = i % 8
    if kind == 0:
      payloads.append(_example(id=i)); expected.append("missing_field")
    elif kind == 1:
      payloads.append(_example(body=b"caf\xc3", id=i)); expected.append("invalid_utf8")
    elif kind == 2:
      payloads.append(_example(body=b"   ")); expected.append("empty")
    elif kind == 3:
      payloads.append(b"\x0a\xff\xff garbage"); expected.append("malformed_example")
    elif kind == 4:
      payloads.append(_example(body=i)); expected.append("missing_field")  # int, not bytes.
    else:
      text = f"record {i} \u2014 na\u00efve"
      payloads.append(_example(body=text.encode(), id=i, other=b"ignored")); expected.append(text)
  files = [tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"]
  _write_tfrecords(files[0], payloads[:70])
  _write_tfrecords(files[1], payloads[70:])
  spec = sources.CorpusSpec(name="tfr", format="tfrecord",
                            splits={"train": str(tmp_path / "*.tfrecord")}, feature_key="body")
  assert spec.files("train") == [str(f) for f in files]
  assert [spec.unit_count(str(f)) for f in files] == [70, 50]
  got = []
  for f in spec.files("train"):
    records = _all_records(spec, f)
    rng = random.Random(4)
    for _ in range(10):
      assert _records_over_random_ranges(spec, f, rng, rng.randint(2, 9)) == records
    for _, raw in records:
      try:
        got.append(spec.parse(raw))
      except sources.BadRecord as e:
        got.append(e.reason)
  assert got == expected
  assert _source_texts(spec) == [t for t in expected if " " in t]


def test_tfds_dataset_both_faces(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  docs = ["first document", "second one", "", "fourth \u00e9"]
  tfds.dataset_builders.store_as_tfds_dataset(
      name="tiny_corpus", version="1.0.0",
      features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
      split_datasets={"train": tf.data.Dataset.from_tensor_slices({"text": docs}),
                      "validation": tf.data.Dataset.from_tensor_slices({"text": ["val"]})},
      data_dir=str(tmp_path))
  spec = sources.CorpusSpec(name="tiny", format="tfds", tfds_name="tiny_corpus",
                            tfds_data_dir=str(tmp_path))
  files = spec.files("train")
  assert len(files) == 1 and "tiny_corpus-train.tfrecord" in files[0]
  texts, reasons = _parse_all(spec, _all_records(spec, files[0]))
  assert sorted(texts) == sorted(d for d in docs if d) and reasons == ["empty"]
  assert _source_texts(spec) == texts  # Same order: both read the prepared file as written.
  assert _source_texts(spec, "validation") == ["val"]


def test_tfds_absent_is_a_clear_error(tmp_path):
  spec = sources.CorpusSpec(name="gone", format="tfds", tfds_name="not_there",
                            tfds_data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not prepared under tfds_data_dir"):
    spec.files("train")
  with pytest.raises(FileNotFoundError, match="never downloaded"):
    spec.data_source().get_dataset(split="train", shuffle=False)


def test_globs_sorted_and_errors(tmp_path):
  for name in ("b.txt", "a.txt", "sub/c.txt"):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(f"{name}\n")
  spec = sources.CorpusSpec(name="g", splits={
      "train": (str(tmp_path / "*.txt"), str(tmp_path / "sub" / "*.txt")),
      "validation": str(tmp_path / "none*.txt")})
  assert spec.files("train") == sorted(str(tmp_path / n) for n in ("a.txt", "b.txt", "sub/c.txt"))
  assert _source_texts(spec) == ["a.txt", "b.txt", "sub/c.txt"]
  with pytest.raises(FileNotFoundError, match=r"split 'validation': no file matches"):
    spec.files("validation")
  with pytest.raises(ValueError, match=r"no split 'test'"):
    spec.files("test")


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="Bad-Name", splits={"train": "x"}), "CorpusSpec.name"),
    (dict(name="ok", format="csv", splits={"train": "x"}), "CorpusSpec.format"),
    (dict(name="ok", text_mode="page", splits={"train": "x"}), "CorpusSpec.text_mode"),
    (dict(name="ok"), "CorpusSpec.splits"),
    (dict(name="ok", splits={"train": "x"}, max_document_chars=0), "max_document_chars"),
    (dict(name="ok", format="tfds", tfds_name="x"), "tfds_data_dir"),
])
def test_corpus_spec_validation_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sources.CorpusSpec(**kwargs)


def test_bad_record_reason_is_checked():
  with pytest.raises(ValueError, match="reason must be one of"):
    sources.BadRecord("weird")


def test_sources_module_imports_no_tensorflow():
  code = ("import importlib.util, sys\n"
          f"spec = importlib.util.spec_from_file_location('s', {os.path.join(REPO, 'tasks', 'sources.py')!r})\n"
          "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
          "c = m.CorpusSpec(name='x', splits={'train': '/dev/null'})\n"
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules, sorted(sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
