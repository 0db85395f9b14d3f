r"""The main job end to end, on this machine: `make demo` (or `python -m pipelines.demo`).

Chains the toolkit's own commands — each stage is a normal command you can rerun or replace:

  1. corpus     python -m pipelines.prepare_corpus        (built-in `pydoc` text; or your files)
  2. vocab      python -m pipelines.train_vocab           (SentencePiece; sentinels + mode tokens)
  3. cache      python -m pipelines.cache_tasks           (Beam, local runner: causal LM, PrefixLM, UL2)
  4. teacher    python -m trainer.train                   (tiny decoder-only Gemma 2, causal LM)
  5. adapt      python -m trainer.adapt                   (decoder-only -> encoder-decoder)
     distill    python -m trainer.train                   (UL2 + PrefixLM mixture, online distillation)
  6. eval       python -m trainer.eval                    (held-out target loss/perplexity, both models)
     export     python -m trainer.export_hf               (Hugging Face T5Gemma checkpoint)

and ends with a summary: where each artefact is, the metrics, and a PNG of the training-loss curves.
A rerun reuses completed stages (a stage is complete when its command succeeded with the same
arguments; delete WORK_DIR/stages/<stage>.done to redo one).

  python -m pipelines.demo [--work_dir=demo_out] [--quick] [--family=gemma2|gemma3]

`--family=gemma3` runs the same chain with the T5Gemma 2 recipe: a tiny Gemma 3 teacher
(gin/models/gemma3_tiny.gin), adapted into T5Gemma 2 (merged attention, tied embedding;
gin/models/t5gemma2_tiny.gin) and exported as `T5Gemma2ForConditionalGeneration`.
  python -m pipelines.demo --corpus_train='my/*.txt' --corpus_validation='held/*.txt' \
      [--corpus_format=text|paragraphs|jsonl] [--text_field=text]
"""
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import flags

from tasks import cli

_WORK_DIR = flags.DEFINE_string('work_dir', 'demo_out', 'where every artefact goes')
_CORPUS_TRAIN = flags.DEFINE_string(
    'corpus_train', None, 'glob(s) of your training text/JSONL files (default: built-in corpus)')
_CORPUS_VALIDATION = flags.DEFINE_string('corpus_validation', None, 'glob(s) of held-out files')
_CORPUS_FORMAT = flags.DEFINE_enum('corpus_format', 'text', ['text', 'paragraphs', 'jsonl'],
                                   'format of the --corpus_* files')
_TEXT_FIELD = flags.DEFINE_string('text_field', 'text', 'JSONL field holding the text')
_QUICK = flags.DEFINE_boolean('quick', False, 'tiny settings (for tests)')
_FAMILY = flags.DEFINE_enum('family', 'gemma2', ['gemma2', 'gemma3'],
                            'gemma2: Gemma 2 -> T5Gemma; gemma3: Gemma 3 -> T5Gemma 2')

# family -> (teacher model file, encoder-decoder model file, HF encoder-decoder class name)
FAMILIES = {
    'gemma2': ('gin/models/gemma2_tiny.gin', 'gin/models/t5gemma_tiny.gin', 'T5Gemma'),
    'gemma3': ('gin/models/gemma3_tiny.gin', 'gin/models/t5gemma2_tiny.gin', 'T5Gemma 2'),
}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of the demo run; `quick` is for tests."""
  vocab_size: int = 2000
  causal_length: int = 128
  inputs_length: int = 128
  targets_length: int = 128
  batch_size: int = 16
  teacher_steps: int = 300
  adapt_steps: int = 200
  learning_rate: float = 0.01
  warmup_steps: int = 50
  log_period: int = 10

  @classmethod
  def quick(cls) -> 'Settings':
    return cls(vocab_size=600, causal_length=64, inputs_length=64, targets_length=64,
               batch_size=8, teacher_steps=12, adapt_steps=8, warmup_steps=4, log_period=2)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  title: str
  argv: List[str]
  outputs: Dict[str, str]   # artefact label -> path


class StageFailed(RuntimeError):
  pass


# Start-up lines from native libraries (TF, XLA, TF-Text's SentencePiece op) that say nothing about
# the run; they stay in the stage's log file but are not echoed.
_NOISE = ('normalizer.cc(51) LOG(INFO)', 'cudart_stub.cc', 'WARNING: All log messages before absl',
          'apitools not found', 'Could not find cuda drivers')


def _py(*args: str) -> List[str]:
  return [sys.executable, '-m', *args]


def _gin_str(value: str) -> str:
  return repr(str(value))


def build_stages(*, work: str, settings: Settings, corpus_module: str, task_prefix: str,
                 corpus_train: Optional[str], family: str = 'gemma2') -> List[Stage]:
  """The demo's chain of commands, in order (`family`: a key of FAMILIES)."""
  s = settings
  teacher_gin, student_gin, hf_name = FAMILIES[family]
  vocab_prefix = os.path.join(work, 'vocab', 'spm')
  cache = os.path.join(work, 'cache')
  teacher = os.path.join(work, 'teacher')
  adapted = os.path.join(work, 'adapted')
  student = os.path.join(work, 't5gemma')
  hf_out = os.path.join(work, 'hf_t5gemma' if family == 'gemma2' else 'hf_t5gemma2')
  corpus_dir = os.path.join(work, 'corpora')
  t = task_prefix
  common_train = [
      f'--module_import={corpus_module}',
      f'--gin.VOCAB_SIZE={s.vocab_size}',
      f'--gin.BATCH_SIZE={s.batch_size}',
      '--gin.USE_CACHED_TASKS=True',
      f'--gin.CACHE_DIR={_gin_str(cache)}',
      f'--gin.LEARNING_RATE={s.learning_rate}',
      f'--gin.WARMUP_STEPS={s.warmup_steps}',
      f'--gin.LOG_PERIOD={s.log_period}',
      '--gin.CHECKPOINT_PERIOD=100',
  ]
  stages = []
  if corpus_train is None:
    stages.append(Stage(
        'corpus', 'built-in corpus (Python reference docs)',
        _py('pipelines.prepare_corpus', '--corpus=pydoc', f'--output_dir={corpus_dir}'),
        {'corpus': os.path.join(corpus_dir, 'pydoc')}))
    corpus_train = os.path.join(corpus_dir, 'pydoc', 'train.txt')
  stages += [
      Stage('vocab', 'SentencePiece vocabulary',
            _py('pipelines.train_vocab', f'--input={corpus_train}',
                f'--vocab_size={s.vocab_size}', f'--output={vocab_prefix}'),
            {'vocabulary': vocab_prefix + '.model'}),
      Stage('cache_causal_lm', 'Beam cache job: causal LM',
            _py('pipelines.cache_tasks', f'--module_import={corpus_module}',
                f'--tasks={t}_causal_lm', f'--output_cache_dir={cache}',
                f'--feature_lengths=targets:{s.causal_length}', '--min_shards=2'),
            {'cache': cache}),
      Stage('cache_enc_dec', 'Beam cache job: the UL2 + PrefixLM mixture',
            _py('pipelines.cache_tasks', f'--module_import={corpus_module}',
                f'--tasks={t}_ul2_prefix_lm', f'--output_cache_dir={cache}',
                f'--feature_lengths=inputs:{s.inputs_length},targets:{s.targets_length}',
                '--min_shards=2'),
            {}),
      Stage('teacher', 'pretrain the decoder-only teacher (causal LM)',
            _py('trainer.train', f'--gin_file={teacher_gin}',
                '--gin_file=gin/runs/pretrain.gin', f'--gin.MODEL_DIR={_gin_str(teacher)}',
                f'--gin.MIXTURE_OR_TASK_NAME={_gin_str(t + "_causal_lm")}',
                f"--gin.TASK_FEATURE_LENGTHS={{'targets': {s.causal_length}}}",
                f'--gin.TRAIN_STEPS={s.teacher_steps}', *common_train),
            {'teacher checkpoint': teacher}),
      Stage('adapt', 'adapt decoder-only -> encoder-decoder',
            _py('trainer.adapt', f'--decoder_only={teacher}', f'--output={adapted}'),
            {'adapted checkpoint': adapted}),
      Stage('distill', 'train the encoder-decoder: UL2 + PrefixLM, distilled from the teacher',
            _py('trainer.train', f'--gin_file={student_gin}',
                '--gin_file=gin/runs/distill.gin', f'--gin.MODEL_DIR={_gin_str(student)}',
                f'--gin.DECODER_ONLY_CHECKPOINT={_gin_str(teacher)}',
                f'--gin.MIXTURE_OR_TASK_NAME={_gin_str(t + "_ul2_prefix_lm")}',
                f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {s.inputs_length}, "
                f"'targets': {s.targets_length}}}",
                f'--gin.TRAIN_STEPS={s.adapt_steps}', *common_train),
            {'encoder-decoder checkpoint': student}),
      Stage('eval_teacher', 'held-out loss of the teacher (PrefixLM targets)',
            _py('trainer.eval', f'--module_import={corpus_module}',
                f'--gin_file={teacher_gin}', '--gin_file=gin/runs/eval.gin',
                f'--gin.CHECKPOINT_PATH={_gin_str(teacher)}', "--gin.EVAL_MODE='lm'",
                f'--gin.MIXTURE_OR_TASK_NAME={_gin_str(t + "_prefix_lm")}',
                f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {s.inputs_length}, "
                f"'targets': {s.targets_length}}}",
                f'--gin.VOCAB_SIZE={s.vocab_size}', "--gin.EVAL_SPLIT='validation'",
                f'--gin.EVAL_OUTPUT_DIR={_gin_str(os.path.join(work, "eval", "teacher"))}',
                # The teacher is a causal LM: score the same targets with a causal prefix.
                '--gin.models.DecoderOnlyModel.bidirectional_prefix=False'),
            {'teacher eval': os.path.join(work, 'eval', 'teacher')}),
      Stage('eval_t5gemma', 'held-out loss of the encoder-decoder (PrefixLM targets)',
            _py('trainer.eval', f'--module_import={corpus_module}',
                f'--gin_file={student_gin}', '--gin_file=gin/runs/eval.gin',
                f'--gin.CHECKPOINT_PATH={_gin_str(student)}', "--gin.EVAL_MODE='lm'",
                f'--gin.MIXTURE_OR_TASK_NAME={_gin_str(t + "_prefix_lm")}',
                f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {s.inputs_length}, "
                f"'targets': {s.targets_length}}}",
                f'--gin.VOCAB_SIZE={s.vocab_size}', "--gin.EVAL_SPLIT='validation'",
                f'--gin.EVAL_OUTPUT_DIR={_gin_str(os.path.join(work, "eval", "t5gemma"))}'),
            {'encoder-decoder eval': os.path.join(work, 'eval', 't5gemma')}),
      Stage('export', f'export the encoder-decoder as a Hugging Face {hf_name} checkpoint',
            _py('trainer.export_hf', f'--checkpoint={student}', f'--output={hf_out}'),
            {f'Hugging Face {hf_name}': hf_out}),
  ]
  return stages


def shell_quote(arg: str) -> str:
  """Quotes for a POSIX shell the way a person writes gin flags: --gin.X="'v'"."""
  if "'" in arg and not any(c in arg for c in '"$`\\!'):
    return f'"{arg}"'
  return shlex.quote(arg)


def shell_command(argv: Sequence[str]) -> str:
  """The stage's command as a user would type it (`python -m ...`)."""
  return ' '.join(['python'] + [shell_quote(a) for a in argv[1:]])


def _done_path(work: str, stage: Stage) -> str:
  return os.path.join(work, 'stages', f'{stage.name}.done')


def _is_done(work: str, stage: Stage) -> bool:
  try:
    with open(_done_path(work, stage), encoding='utf-8') as f:
      return json.load(f).get('argv') == stage.argv[1:]
  except (OSError, ValueError):
    return False


def run_stage(*, work: str, stage: Stage, env: Dict[str, str], index: int, total: int) -> float:
  """Runs one stage's command, streaming its output with a prefix; returns seconds taken."""
  header = f'[{index}/{total}] {stage.title}'
  if _is_done(work, stage):
    print(f'{header}: done before, reused (delete {_done_path(work, stage)} to redo)', flush=True)
    return 0.0
  print(f'{header}\n    $ {shell_command(stage.argv)}', flush=True)
  os.makedirs(os.path.join(work, 'logs'), exist_ok=True)
  log_path = os.path.join(work, 'logs', f'{stage.name}.log')
  start = time.time()
  with open(log_path, 'w', encoding='utf-8') as log, subprocess.Popen(
      stage.argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, bufsize=1) as proc:
    for line in proc.stdout:
      log.write(line)
      if not any(n in line for n in _NOISE):
        print(f'    {line.rstrip()}', flush=True)
    code = proc.wait()
  took = time.time() - start
  if code != 0:
    raise StageFailed(f'stage {stage.name!r} failed (exit {code}); its output is in {log_path}. '
                      f'Rerun `python -m pipelines.demo` to resume from this stage.')
  os.makedirs(os.path.dirname(_done_path(work, stage)), exist_ok=True)
  with open(_done_path(work, stage), 'w', encoding='utf-8') as f:
    json.dump({'argv': stage.argv[1:], 'seconds': round(took, 1)}, f)
  print(f'    ({took:.0f} s)', flush=True)
  return took


def _read_jsonl(path: str) -> List[dict]:
  if not os.path.isfile(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _train_rows(model_dir: str) -> List[dict]:
  """The training rows of a run's MODEL_DIR/metrics.jsonl (one JSON object per logged step)."""
  return [r for r in _read_jsonl(os.path.join(model_dir, 'metrics.jsonl'))
          if r.get('split') == 'train' and 'loss' in r and 'step' in r]


def _cross_entropy(row: dict) -> float:
  """Token cross-entropy of a metrics row: comparable between the teacher and the distilled
  student, whose `loss` also mixes in the KL term."""
  return row.get('cross_entropy', row['loss'])


def plot_losses(*, runs: Dict[str, str], out_png: str) -> Optional[str]:
  """Plots training loss against step for each run's MODEL_DIR/metrics.jsonl; returns the path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  plotted = 0
  for label, model_dir in runs.items():
    rows = _train_rows(model_dir)
    if rows:
      ax.plot([r['step'] for r in rows], [_cross_entropy(r) for r in rows], marker='.',
              label=label)
      plotted += 1
  if not plotted:
    plt.close(fig)
    return None
  ax.set_xlabel('step')
  ax.set_ylabel('training cross-entropy (nats/token)')
  ax.set_title('gemma-adapt demo: training cross-entropy')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png


def _eval_metrics(eval_dir: str) -> Dict[str, float]:
  out = {}
  if os.path.isdir(eval_dir):
    for name in sorted(os.listdir(eval_dir)):
      if name.endswith('.json'):
        with open(os.path.join(eval_dir, name), encoding='utf-8') as f:
          metrics = json.load(f).get('metrics', {})
        out.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
  return out


def summarize(*, work: str, stages: Sequence[Stage], seconds: float) -> str:
  """The closing summary: artefacts, metrics, loss plot."""
  lines = ['', '=' * 72, 'gemma-adapt demo: summary', '=' * 72, 'Artefacts:']
  for stage in stages:
    for label, path in stage.outputs.items():
      lines.append(f'  {label:28s} {path}')
  png = plot_losses(runs={'teacher (decoder-only, causal LM)': os.path.join(work, 'teacher'),
                          'T5Gemma (UL2+PrefixLM, distilled)': os.path.join(work, 't5gemma')},
                    out_png=os.path.join(work, 'loss_curves.png'))
  if png:
    lines.append(f'  {"training-loss plot":28s} {png}')
  lines.append('Held-out PrefixLM targets (validation split):')
  for label, sub in (('teacher (decoder-only)', 'teacher'), ('encoder-decoder', 't5gemma')):
    m = _eval_metrics(os.path.join(work, 'eval', sub))
    shown = ', '.join(f'{k}={v:.4g}' for k, v in m.items() if k in ('loss', 'perplexity',
                                                                         'num_tokens'))
    lines.append(f'  {label:28s} {shown or "(no eval output)"}')
  for label, sub in (('teacher', 'teacher'), ('encoder-decoder', 't5gemma')):
    rows = _train_rows(os.path.join(work, sub))
    if rows:
      lines.append(f'  {label + " train CE":28s} step {rows[0]["step"]}: '
                   f'{_cross_entropy(rows[0]):.4g} -> step {rows[-1]["step"]}: '
                   f'{_cross_entropy(rows[-1]):.4g}')
  lines.append(f'Wall time of this invocation: {seconds / 60:.1f} min')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> int:
  del argv
  corpus_train, corpus_validation = _CORPUS_TRAIN.value, _CORPUS_VALIDATION.value
  if (corpus_train is None) != (corpus_validation is None):
    raise cli.UserError('give both --corpus_train and --corpus_validation, or neither')

  work = os.path.abspath(_WORK_DIR.value)
  settings = Settings.quick() if _QUICK.value else Settings()
  env = dict(os.environ)
  env.update({
      'GEMMA_ADAPT_VOCAB': os.path.join(work, 'vocab', 'spm.model'),
      'GEMMA_ADAPT_DATA': os.path.join(work, 'corpora'),
      'TF_CPP_MIN_LOG_LEVEL': '3',
      'PYTHONUNBUFFERED': '1',
  })
  if corpus_train is None:
    corpus_module, prefix = 'tasks', 'pydoc'
  else:
    corpus_module, prefix = 'pipelines.demo_tasks', 'demo'
    env.update({'GEMMA_ADAPT_DEMO_TRAIN': corpus_train,
                'GEMMA_ADAPT_DEMO_VALIDATION': corpus_validation,
                'GEMMA_ADAPT_DEMO_FORMAT': _CORPUS_FORMAT.value,
                'GEMMA_ADAPT_DEMO_TEXT_FIELD': _TEXT_FIELD.value})
  stages = build_stages(work=work, settings=settings, corpus_module=corpus_module,
                        task_prefix=prefix, corpus_train=corpus_train, family=_FAMILY.value)
  print(f'gemma-adapt demo: {len(stages)} stages, artefacts in {work}', flush=True)
  start = time.time()
  try:
    for i, stage in enumerate(stages, 1):
      run_stage(work=work, stage=stage, env=env, index=i, total=len(stages))
  except StageFailed as e:
    print(f'\nERROR: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print('\nInterrupted; rerun to resume from the unfinished stage.', file=sys.stderr)
    return 130
  print(summarize(work=work, stages=stages, seconds=time.time() - start), flush=True)
  return 0


if __name__ == '__main__':
  cli.main_exit(main, program='demo')
