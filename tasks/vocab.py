"""SentencePiece vocabularies and the special tokens objectives use.

Two kinds of vocabulary are supported:

- Our own ("extra_id" style), trained by `train_vocabulary` (CLI: `python -m pipelines.train_vocab`):
  pad=0, eos=1, bos=2, unk=3 (Gemma's ids), then the user-defined pieces `[NLU]`, `[NLG]`, `[S2S]`,
  `<extra_id_0>`, ..., `<extra_id_{K-1}>` (ids 4, 5, 6, 7, ...), then the learned pieces.
- Gemma-style ("reserved" style): a tokenizer with reserved pieces `<unused0>`, `<unused1>`, ... (the
  real Gemma tokenizer has 256k pieces and `<unused0>`..`<unused98>`). Special tokens are mapped
  onto reserved pieces inside the vocabulary, so ids never exceed the embedding table. The order
  is fixed and documented here: `[NLU]` -> `<unused0>`, `[NLG]` -> `<unused1>`, `[S2S]` ->
  `<unused2>`, sentinel i -> `<unused{i+3}>` (as many sentinels as there are consecutive reserved
  pieces from `<unused3>` on). In text (inputs you write, decoded outputs), these tokens appear as
  the reserved piece's own string, e.g. `<unused5>` is sentinel 2.

Every special token must encode to exactly one id and decode back to its own string; this is
checked when `special_tokens` builds the table (a piece of type CONTROL, for instance, decodes to the
empty string and is rejected with an error naming it).

The special-token table itself lives in `tasks.special_tokens` (TF-free); its names are part of
this module's API too (`vocab.special_tokens`, `vocab.SpecialTokens`, `vocab.MODE_TOKENS`).
"""
import os
from typing import Optional, Sequence, Tuple

import seqio

from tasks import cli
from tasks.special_tokens import MODE_TOKENS
from tasks.special_tokens import reserved_piece  # noqa: F401
from tasks.special_tokens import RESERVED_MODE_OFFSET  # noqa: F401
from tasks.special_tokens import RESERVED_SENTINEL_OFFSET  # noqa: F401
from tasks.special_tokens import sentinel_piece
from tasks.special_tokens import special_tokens_for_model
from tasks.special_tokens import SpecialTokens
from tasks.special_tokens import STYLE_OWN  # noqa: F401
from tasks.special_tokens import STYLE_RESERVED  # noqa: F401

DEFAULT_NUM_SENTINELS = 100
# Environment variable naming the default vocabulary (a SentencePiece .model file).
VOCAB_ENV = 'GEMMA_ADAPT_VOCAB'
DEFAULT_VOCAB_PATH = os.path.join('~', '.cache', 'gemma_adapt', 'vocab', 'spm.model')
# Gemma's special ids; seqio requires PAD=0 and EOS=1.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


def default_vocab_path() -> str:
  """`$GEMMA_ADAPT_VOCAB` if set, else `~/.cache/gemma_adapt/vocab/spm.model` (expanded)."""
  return os.path.expanduser(os.environ.get(VOCAB_ENV) or DEFAULT_VOCAB_PATH)


class MissingVocabularyError(cli.UserError, FileNotFoundError):
  """The vocabulary file does not exist (raised when a task is used, never at import)."""
  # The first use is often inside a tf.data map that autograph traces (seqio's `tokenize`); this
  # makes autograph re-raise the error as is instead of wrapping it in a StagingError.
  ag_pass_through = True


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """`seqio.SentencePieceVocabulary` (no extra ids) that checks its file when first used.

  Constructing it never touches the file, so tasks can be registered before the vocabulary exists;
  the first use (encode, decode, vocab_size, ...) raises `MissingVocabularyError` with how to make
  one, instead of a TensorFlow file error deep inside a data pipeline.
  """

  def __init__(self, sentencepiece_model_file: str):
    super().__init__(os.path.expanduser(sentencepiece_model_file), extra_ids=0)

  def _model_context(self):
    path = self.sentencepiece_model_file
    if self._model is None and '://' not in path and not os.path.isfile(path):
      raise MissingVocabularyError(
          f'SentencePiece vocabulary not found: {path}. Point ${VOCAB_ENV} (or --vocab, or the '
          f'vocabulary= of the task registration) at a .model file, or train one: '
          f'python -m pipelines.train_vocab --input=GLOB '
          f'--vocab_size=N --output={path[:-len(".model")] if path.endswith(".model") else path}')
    return super()._model_context()

  def __str__(self) -> str:
    if self._model is None and not os.path.isfile(self.sentencepiece_model_file):
      return f'SentencePieceVocabulary(file={self.sentencepiece_model_file}, missing)'
    return super().__str__()

  __repr__ = __str__


def get_vocabulary(path: Optional[str] = None, *, lazy: bool = False) -> SentencePieceVocabulary:
  """The vocabulary at `path` (None: `default_vocab_path()`), a `seqio.SentencePieceVocabulary`.

  Args:
    path: SentencePiece `.model` file.
    lazy: if False (default) load it now, so a missing file raises here; if True defer the check
      to first use (what task registration does).

  Raises:
    MissingVocabularyError: the file does not exist (not lazy), with how to make one.
  """
  vocab = SentencePieceVocabulary(path or default_vocab_path())
  if not lazy:
    vocab.load_model()
  return vocab

def special_tokens(vocab) -> SpecialTokens:
  """The mode-token and sentinel ids of `vocab` (a seqio SentencePiece vocabulary or a path).

  Raises:
    ValueError: the vocabulary has neither our pieces nor Gemma-style reserved pieces, or one of
      them is not a single piece that decodes to itself.
  """
  if isinstance(vocab, str):
    vocab = get_vocabulary(vocab)
  description = getattr(vocab, 'sentencepiece_model_file', repr(vocab))
  return special_tokens_for_model(vocab.sp_model, description)


def train_vocabulary(*, input_files: Sequence[str], vocab_size: int, output_prefix: str,
                     num_sentinels: int = DEFAULT_NUM_SENTINELS,
                     reserved_pieces: int = 0,
                     character_coverage: float = 0.9995, byte_fallback: bool = True,
                     model_type: str = 'unigram', max_sentence_length: int = 16384,
                     input_sentence_size: int = 0) -> Tuple[str, str]:
  """Trains a SentencePiece model with Gemma's special ids; returns (`.model`, `.vocab`) paths.

  Deterministic: the same files (sorted here), the same arguments -> the same bytes (one trainer
  thread, no input sampling unless `input_sentence_size` > 0, which samples with a fixed seed).

  Args:
    input_files: text files, one sentence per line (SentencePiece reads lines).
    vocab_size: total number of pieces, special pieces included.
    output_prefix: writes `<output_prefix>.model` and `<output_prefix>.vocab`.
    num_sentinels: K, the number of `<extra_id_i>` sentinel pieces (with `[NLU]`, `[NLG]`, `[S2S]`).
      0 with `reserved_pieces` > 0 builds a Gemma-style vocabulary instead.
    reserved_pieces: N > 0 adds Gemma-style `<unused0>`..`<unused{N-1}>` pieces instead of our
      mode tokens and sentinels (for tests and Gemma-like vocabularies).
    character_coverage, byte_fallback, model_type, max_sentence_length, input_sentence_size:
      SentencePiece trainer options (Gemma uses byte fallback).
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if not input_files:
    raise ValueError('train_vocabulary: input_files is empty')
  if num_sentinels < 0 or reserved_pieces < 0:
    raise ValueError(f'num_sentinels and reserved_pieces must be >= 0, got {num_sentinels}, '
                     f'{reserved_pieces}')
  if reserved_pieces:
    if reserved_pieces <= RESERVED_SENTINEL_OFFSET:
      raise ValueError(f'reserved_pieces must be > {RESERVED_SENTINEL_OFFSET}, got '
                       f'{reserved_pieces}')
    symbols = [reserved_piece(i) for i in range(reserved_pieces)]
  else:
    if num_sentinels < 1:
      raise ValueError(f'num_sentinels must be >= 1, got {num_sentinels}')
    symbols = list(MODE_TOKENS) + [sentinel_piece(i) for i in range(num_sentinels)]
  minimum = 4 + len(symbols) + (256 if byte_fallback else 0) + 1
  if vocab_size < minimum:
    raise ValueError(f'vocab_size={vocab_size} is too small: {len(symbols)} special pieces, 4 '
                     f'control pieces{" and 256 byte pieces" if byte_fallback else ""} need '
                     f'vocab_size >= {minimum}')
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  spm.set_random_generator_seed(0)  # Sentence sampling (input_sentence_size > 0) is seeded.
  spm.SentencePieceTrainer.train(
      input=sorted(input_files), model_prefix=output_prefix, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage, byte_fallback=byte_fallback,
      pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
      pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>', unk_piece='<unk>',
      user_defined_symbols=symbols,
      # As Gemma: no dummy prefix, no whitespace folding, digits split, identity normalization, so
      # special pieces are single pieces wherever they appear and text round-trips.
      add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
      normalization_rule_name='identity', allow_whitespace_only_pieces=True,
      max_sentence_length=max_sentence_length, input_sentence_size=input_sentence_size,
      shuffle_input_sentence=input_sentence_size > 0, num_threads=1,
      minloglevel=2)
  # The trainer records the input and output paths in the model; clear them so the bytes depend only
  # on the text and the options, not on where files were read from or written to.
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  model_path = output_prefix + '.model'
  with open(model_path, 'rb') as f:
    proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
  proto.trainer_spec.ClearField('model_prefix')
  proto.trainer_spec.ClearField('input')
  with open(model_path, 'wb') as f:
    f.write(proto.SerializeToString(deterministic=True))
  return model_path, output_prefix + '.vocab'

