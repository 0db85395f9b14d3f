"""Vocabularies: our own (trained here) and Gemma-style (reserved <unusedN> pieces)."""
import os
import subprocess
import sys

import pytest
import sentencepiece as spm

from tasks import vocab as vocab_lib

# corpus_file: a tinyshakespeare slice (tests/conftest.py).


@pytest.fixture(scope="module")
def own_model(corpus_file, tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp("own") / "spm")
  model, _ = vocab_lib.train_vocabulary(input_files=[corpus_file], vocab_size=600,
                                        output_prefix=prefix)
  return model


@pytest.fixture(scope="module")
def gemma_like_model(corpus_file, tmp_path_factory):
  """A small Gemma-like model: pad/eos/bos/unk = 0/1/2/3 and <unused0>..<unused39> pieces."""
  prefix = str(tmp_path_factory.mktemp("gemma") / "spm")
  model, _ = vocab_lib.train_vocabulary(input_files=[corpus_file], vocab_size=600,
                                        output_prefix=prefix, reserved_pieces=40)
  return model


def _assert_single_pieces(vocab, pieces_and_ids):
  for piece, i in pieces_and_ids:
    assert vocab.encode(piece) == [i], piece
    assert vocab.tokenizer.decode([i]) == piece
    assert 0 <= i < vocab.vocab_size
    # In running text too (no dummy prefix, so the piece is not merged with a preceding space).
    ids = vocab.encode(f"Hark, {piece} the king")
    assert ids.count(i) == 1
    assert vocab.tokenizer.decode(ids) == f"Hark, {piece} the king"


def test_own_vocabulary_ids_and_special_tokens(own_model):
  vocab = vocab_lib.get_vocabulary(own_model)
  sp = vocab.tokenizer
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
  assert (vocab.pad_id, vocab.eos_id) == (0, 1)  # What seqio assumes.
  assert vocab.vocab_size == 600
  special = vocab_lib.special_tokens(vocab)
  assert special.style == "extra_id"
  assert special.mode_ids == {"[NLU]": 4, "[NLG]": 5, "[S2S]": 6}
  assert special.sentinel_ids == tuple(range(7, 107))
  assert special.sentinel_pieces[0] == "<extra_id_0>"
  assert special.sentinel_pieces[99] == "<extra_id_99>"
  _assert_single_pieces(vocab, list(special.mode_ids.items()))
  _assert_single_pieces(vocab, list(zip(special.sentinel_pieces, special.sentinel_ids)))


def test_gemma_style_vocabulary_maps_specials_onto_reserved_pieces(gemma_like_model):
  vocab = vocab_lib.get_vocabulary(gemma_like_model)
  special = vocab_lib.special_tokens(vocab)
  sp = vocab.tokenizer
  assert special.style == "reserved"
  assert special.mode_pieces == {"[NLU]": "<unused0>", "[NLG]": "<unused1>",
                                 "[S2S]": "<unused2>"}
  assert special.mode_ids == {m: sp.piece_to_id(p) for m, p in special.mode_pieces.items()}
  assert special.sentinel_pieces == tuple(f"<unused{i}>" for i in range(3, 40))
  assert special.sentinel_ids == tuple(sp.piece_to_id(f"<unused{i}>") for i in range(3, 40))
  assert max(special.sentinel_ids) < vocab.vocab_size  # Inside the embedding table.
  _assert_single_pieces(vocab, [(special.mode_pieces[m], i) for m, i in special.mode_ids.items()])
  _assert_single_pieces(vocab, list(zip(special.sentinel_pieces, special.sentinel_ids)))


def test_tf_tokenizer_agrees_on_special_pieces(own_model, gemma_like_model):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for model in (own_model, gemma_like_model):
    vocab = vocab_lib.get_vocabulary(model)
    special = vocab_lib.special_tokens(vocab)
    text = (f"{special.mode_pieces['[NLG]']}To be, {special.sentinel_pieces[0]} not to be"
            f"{special.sentinel_pieces[1]}")
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == vocab.encode(text)
    assert special.mode_ids["[NLG]"] in vocab.encode(text)


def test_control_pieces_are_rejected(corpus_file, tmp_path):
  """Reserved pieces of CONTROL type decode to '' and are not matched in text: refuse them."""
  prefix = str(tmp_path / "control")
  spm.SentencePieceTrainer.train(
      input=corpus_file, model_prefix=prefix, vocab_size=400, pad_id=0, eos_id=1, bos_id=2,
      unk_id=3, control_symbols=[f"<unused{i}>" for i in range(8)], add_dummy_prefix=False,
      minloglevel=2)
  with pytest.raises(ValueError, match=r"<unused0>.*type CONTROL.*does not round-trip"):
    vocab_lib.special_tokens(vocab_lib.get_vocabulary(prefix + ".model"))


def test_vocabulary_without_special_pieces_is_a_clear_error(corpus_file, tmp_path):
  prefix = str(tmp_path / "plain")
  spm.SentencePieceTrainer.train(input=corpus_file, model_prefix=prefix, vocab_size=400,
                                 pad_id=0, eos_id=1, bos_id=2, unk_id=3, minloglevel=2)
  with pytest.raises(ValueError, match=r"neither .*<extra_id_0>.*nor Gemma-style"):
    vocab_lib.special_tokens(prefix + ".model")


def test_missing_vocabulary_fails_at_use_not_construction(tmp_path):
  path = str(tmp_path / "nowhere" / "spm.model")
  vocab = vocab_lib.get_vocabulary(path, lazy=True)
  assert "missing" in str(vocab)
  with pytest.raises(vocab_lib.MissingVocabularyError, match="pipelines.train_vocab"):
    _ = vocab.vocab_size
  with pytest.raises(vocab_lib.MissingVocabularyError, match="not found"):
    vocab_lib.get_vocabulary(path)


def test_default_vocab_path_from_env(monkeypatch, tmp_path):
  monkeypatch.setenv(vocab_lib.VOCAB_ENV, str(tmp_path / "v.model"))
  assert vocab_lib.default_vocab_path() == str(tmp_path / "v.model")
  monkeypatch.delenv(vocab_lib.VOCAB_ENV)
  assert vocab_lib.default_vocab_path().endswith(os.path.join("gemma_adapt", "vocab", "spm.model"))


def test_train_vocabulary_is_deterministic_and_the_cli_matches(corpus_file, own_model, tmp_path,
                                                                repo_root):
  again, vocab_file = vocab_lib.train_vocabulary(
      input_files=[corpus_file], vocab_size=600, output_prefix=str(tmp_path / "lib" / "again"))
  with open(own_model, "rb") as a, open(again, "rb") as b:
    assert a.read() == b.read()
  # The CLI, another output location: the same bytes.
  out = tmp_path / "cli" / "spm"
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.train_vocab", f"--input={corpus_file}",
       "--vocab_size=600", f"--output={out}"],
      cwd=repo_root, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0, proc.stderr
  assert "[NLU]=4" in proc.stdout and "<extra_id_0>=7" in proc.stdout
  with open(own_model, "rb") as a, open(f"{out}.model", "rb") as b:
    assert a.read() == b.read()
  with open(vocab_file, "rb") as a, open(f"{out}.vocab", "rb") as b:
    assert a.read() == b.read()


def test_train_vocabulary_rejects_too_small_vocab(corpus_file, tmp_path):
  with pytest.raises(ValueError, match="vocab_size=300 is too small"):
    vocab_lib.train_vocabulary(input_files=[corpus_file], vocab_size=300,
                               output_prefix=str(tmp_path / "x"))


def test_train_vocab_cli_from_a_registered_corpus(tmp_path, repo_root):
  """--corpus reads any registered corpus (here the built-in pydoc one) through CorpusSpec."""
  out = tmp_path / "pydoc_spm"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "GEMMA_ADAPT_DATA": str(tmp_path / "data")}
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.train_vocab", "--corpus=pydoc", "--vocab_size=700",
       f"--output={out}"], cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip() == ""  # No TF/absl start-up noise.
  assert "Corpus 'pydoc' split 'train': " in proc.stdout
  special = vocab_lib.special_tokens(f"{out}.model")
  assert special.mode_ids == {"[NLU]": 4, "[NLG]": 5, "[S2S]": 6}
  assert vocab_lib.get_vocabulary(f"{out}.model").encode("def") != []
