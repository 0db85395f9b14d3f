"""SeqIO data layer: vocabularies, corpora, objectives, task and mixture registries.

Importing `tasks` (or any `tasks.*` module) registers nothing and imports no TensorFlow by itself.
The built-in tasks are registered by `tasks.register_tasks()`, which `--module_import=tasks` calls
(`tasks.cli.import_modules` calls a module's `register_tasks()` after importing it). It reads no
file and registers:
- pretraining tasks on the built-in `pydoc` corpus (`tasks.builtin`): `pydoc_prefix_lm`,
  `pydoc_ul2`, `pydoc_span_corruption`, `pydoc_causal_lm`, and the mixture `pydoc_ul2_prefix_lm`;
- downstream tasks `glue_sst2_text_to_text` and `glue_sst2_classification` (`tasks.downstream`,
  data under `$GEMMA_ADAPT_GLUE_DIR`); the rest of GLUE, SuperGLUE and MS MARCO ranking are
  registered from a data directory with `tasks.downstream.register_*_tasks` (see that package).
All use the vocabulary at `tasks.vocab.default_vocab_path()` (`$GEMMA_ADAPT_VOCAB`, default
`~/.cache/gemma_adapt/vocab/spm.model`); it is loaded when a task is used, not here.

In Python:
  import tasks
  tasks.register_tasks()            # idempotent: later calls do nothing
  seqio.get_mixture_or_task('pydoc_ul2')

Your own corpus, in your own module loaded with `--module_import=my_tasks` (a module that
registers at import, or defines its own `register_tasks()`):
  from tasks import pretraining, sources
  pretraining.register_corpus_tasks(
      corpus=sources.CorpusSpec(name='mine', format='jsonl', splits={'train': '/data/*.jsonl'}),
      vocabulary='/vocab/spm.model')
"""
import os as _os

# Any TensorFlow a `tasks.*` module loads stays quiet (C++ log lines) unless the user says otherwise.
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
_registered = False


def register_tasks() -> None:
  """Registers the built-in tasks and mixtures listed above, once per process."""
  global _registered  # pylint: disable=global-statement
  if _registered:
    return
  from tasks import cli  # pylint: disable=g-import-not-at-top
  # The first TensorFlow import writes C++ start-up lines to stderr; keep them out of tool output.
  with cli.quiet_native_stderr():
    from tasks import builtin  # pylint: disable=g-import-not-at-top
    from tasks import downstream  # pylint: disable=g-import-not-at-top
    from tasks import pretraining  # pylint: disable=g-import-not-at-top
  pretraining.register_corpus_tasks(corpus=builtin.pydoc_corpus())
  downstream.register_glue_tasks()
  _registered = True
