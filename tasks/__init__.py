"""SeqIO data layer: vocabularies, corpora, objectives, task and mixture registries.

`import tasks` (or `--module_import=tasks`) registers the built-in tasks, reading no file:
- pretraining tasks on the built-in `pydoc` corpus (`tasks.builtin`): `pydoc_prefix_lm`,
  `pydoc_ul2`, `pydoc_span_corruption`, `pydoc_causal_lm`, and the mixture `pydoc_ul2_prefix_lm`;
- downstream tasks `glue_sst2_text_to_text` and `glue_sst2_classification` (`tasks.downstream`,
  data under `$GEMMA_ADAPT_GLUE_DIR`).
All use the vocabulary at `tasks.vocab.default_vocab_path()` (`$GEMMA_ADAPT_VOCAB`, default
`~/.cache/gemma_adapt/vocab/spm.model`); it is loaded when a task is used, not here.

Your own corpus, in your own module loaded with `--module_import=my_tasks`:
  from tasks import pretraining, sources
  pretraining.register_corpus_tasks(
      corpus=sources.CorpusSpec(name='mine', format='jsonl', splits={'train': '/data/*.jsonl'}),
      vocabulary='/vocab/spm.model')
"""
import os as _os

_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top,wrong-import-position
from tasks import cli

# The first TensorFlow import writes C++ start-up lines to stderr; keep them out of tool output.
with cli.quiet_native_stderr():
  from tasks import builtin
  from tasks import downstream
  from tasks import pretraining

pretraining.register_corpus_tasks(corpus=builtin.pydoc_corpus())
downstream.register_glue_tasks()
