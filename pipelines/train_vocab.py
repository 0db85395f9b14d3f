r"""Trains a SentencePiece vocabulary with our special pieces (Gemma's special ids).

  python -m pipelines.train_vocab --input='corpus/*.txt' --vocab_size=32000 --output=vocab/spm
  python -m pipelines.train_vocab --corpus=pydoc --vocab_size=2000 --output=vocab/spm

With --input, text files are read as they are (one sentence per line). With --corpus, the valid
documents of a registered corpus (any format: JSONL, TFRecord, ...; see --module_import) are
written to a temporary text file first.

writes `vocab/spm.model` and `vocab/spm.vocab`: pad=0, eos=1, bos=2, unk=3, then `[NLU]`, `[NLG]`,
`[S2S]`, `<extra_id_0>`..`<extra_id_{K-1}>` (K = --num_sentinels), then learned pieces. The same
input files and flags give the same bytes. SentencePiece reads one sentence per line.
"""
import glob
import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging

from tasks import cli  # pylint: disable=g-import-not-at-top

_INPUT = flags.DEFINE_string('input', None, 'Glob (or comma-separated globs) of text files.')
_CORPUS = flags.DEFINE_string('corpus', None, 'Instead of --input: a corpus registered by '
                              'tasks.pretraining.register_corpus_tasks (e.g. pydoc).')
_SPLIT = flags.DEFINE_string('split', 'train', 'Split of --corpus to read.')
_MODULE_IMPORT = flags.DEFINE_multi_string('module_import', ['tasks'],
                                           'Modules that register --corpus (with --corpus only).')
_VOCAB_SIZE = flags.DEFINE_integer('vocab_size', None, 'Total number of pieces.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output prefix: writes PREFIX.model, PREFIX.vocab.')
_NUM_SENTINELS = flags.DEFINE_integer('num_sentinels', 100,
                                      'Number of <extra_id_i> sentinel pieces.')
_BYTE_FALLBACK = flags.DEFINE_boolean('byte_fallback', True,
                                      'Add 256 byte pieces so no text maps to <unk> (as Gemma).')
_CHARACTER_COVERAGE = flags.DEFINE_float('character_coverage', 0.9995,
                                         'SentencePiece character coverage.')
_MODEL_TYPE = flags.DEFINE_enum('model_type', 'unigram', ['unigram', 'bpe'],
                                'SentencePiece model type.')
_INPUT_SENTENCE_SIZE = flags.DEFINE_integer(
    'input_sentence_size', 0, 'Sample this many lines (seeded) for training; 0 = all lines.')


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  for flag in (_VOCAB_SIZE, _OUTPUT):
    if flag.value is None:
      raise cli.UserError(f'--{flag.name} is required (see --help)')
  if (_INPUT.value is None) == (_CORPUS.value is None):
    raise cli.UserError('pass exactly one of --input and --corpus')
  with tempfile.TemporaryDirectory() as tmp:
    if _CORPUS.value:
      try:
        files = [_write_corpus_text(_CORPUS.value, _SPLIT.value, _MODULE_IMPORT.value, tmp)]
      except cli.UserError:
        raise
      except (ValueError, ImportError, FileNotFoundError) as e:
        raise cli.UserError(str(e)) from e
    else:
      files = sorted({f for pattern in _INPUT.value.split(',') if pattern
                      for f in glob.glob(os.path.expanduser(pattern), recursive=True)
                      if os.path.isfile(f)})
      if not files:
        raise cli.UserError(f'--input={_INPUT.value!r} matches no file')
    return _train(files)


def _write_corpus_text(corpus: str, split: str, modules, tmp: str) -> str:
  """Valid documents of a registered corpus as one text file (newlines inside kept)."""
  with cli.quiet_native_stderr():
    from tasks import pretraining  # pylint: disable=g-import-not-at-top
    cli.import_modules(modules)
  if corpus not in pretraining.CORPORA:
    raise ValueError(f'--corpus={corpus!r} is not registered; registered corpora: '
                     f'{sorted(pretraining.CORPORA)} (see --module_import)')
  spec = pretraining.CORPORA[corpus]
  path = os.path.join(tmp, f'{corpus}-{split}.txt')
  count = 0
  with open(path, 'w', encoding='utf-8') as f:
    for doc in spec.iter_documents(split):
      f.write(doc.rstrip('\n') + '\n')
      count += 1
  print(f'Corpus {corpus!r} split {split!r}: {count} documents', flush=True)
  return path


def _train(files):
  total = sum(os.path.getsize(f) for f in files)
  print(f'Training a {_VOCAB_SIZE.value}-piece SentencePiece model on {len(files)} file(s), '
        f'{total / 1e6:.1f} MB ...', flush=True)
  with cli.quiet_native_stderr():
    from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  try:
    model, vocab_file = vocab_lib.train_vocabulary(
        input_files=files, vocab_size=_VOCAB_SIZE.value, output_prefix=_OUTPUT.value,
        num_sentinels=_NUM_SENTINELS.value, byte_fallback=_BYTE_FALLBACK.value,
        character_coverage=_CHARACTER_COVERAGE.value, model_type=_MODEL_TYPE.value,
        input_sentence_size=_INPUT_SENTENCE_SIZE.value)
  except (ValueError, RuntimeError) as e:
    raise cli.UserError(str(e)) from e
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model)
  print(f'Wrote {model} and {vocab_file}: {sp.get_piece_size()} pieces; pad={sp.pad_id()} '
        f'eos={sp.eos_id()} bos={sp.bos_id()} unk={sp.unk_id()}; '
        f'[NLU]={sp.piece_to_id("[NLU]")} [NLG]={sp.piece_to_id("[NLG]")} '
        f'[S2S]={sp.piece_to_id("[S2S]")}; sentinels <extra_id_0>={sp.piece_to_id("<extra_id_0>")}'
        f'..<extra_id_{_NUM_SENTINELS.value - 1}>='
        f'{sp.piece_to_id(f"<extra_id_{_NUM_SENTINELS.value - 1}>")}')
  return 0


if __name__ == '__main__':
  cli.main_exit(main, program='train_vocab')
