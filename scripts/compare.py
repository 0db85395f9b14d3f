r"""The scaled-down comparison: decoder-only vs adapted encoder-decoder vs Gemma Encoder on SST-2.

From ONE small decoder-only model pretrained here (causal LM on a corpus built from the shared data
directory: tinyshakespeare + wikitext-2), build and fine-tune on SST-2, for each seed:
  (a) the decoder-only model, fine-tuned text-to-text (as a PrefixLM: inputs are a bidirectional
      prefix, loss on the label word);
  (b) the encoder-decoder adapted from it (trainer.adaptation.adapt.adapt_params: encoder and decoder copied,
      cross-attention from self-attention), further pretrained with PrefixLM and, separately, with
      UL2, for the same token budget (same steps, batch and feature lengths), then fine-tuned
      text-to-text;
  (c) the Gemma Encoder (bidirectional encoder = the decoder-only weights) with each pooler
      ('first', 'last', 'mean', 'attention') and a classification head.
Generative models are scored on SST-2 dev by label-word scoring (log-likelihood of 'negative' vs
'positive'); encoders by their head. The table gives mean +- std accuracy over seeds, parameters,
and inference FLOPs per example (one forward pass at the mean dev lengths, trainer/flops.py
convention / 3).

  python scripts/compare.py --quick --workdir=/tmp/compare --markdown=docs/comparison.md

Stages are cached in --workdir (vocab, pretraining, adaptation, each fine-tune and its eval): a
rerun skips what is done, so an interrupted run resumes. Deterministic given the seeds. Runs on a
2-core CPU (--quick: minutes per fine-tune there); without --quick the sizes are larger (GPU).
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POOLERS = ('first', 'last', 'mean', 'attention')


@dataclasses.dataclass(frozen=True)
class Settings:
  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  sliding_window: int
  pretrain_steps: int
  pretrain_length: int        # causal LM targets length
  adapt_steps: int            # PrefixLM / UL2 steps after adaptation (each)
  adapt_lengths: tuple        # (inputs, targets) for PrefixLM and UL2
  batch_size: int
  finetune_steps: int
  finetune_batch_size: int
  finetune_lr: float
  pretrain_lr: float
  sst2_inputs_length: int
  sst2_targets_length: int
  dev_examples: int           # 0 = the whole dev split (872)


QUICK = Settings(vocab_size=1024, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=256, sliding_window=32, pretrain_steps=300,
                 pretrain_length=128, adapt_steps=100, adapt_lengths=(64, 64), batch_size=16,
                 finetune_steps=150, finetune_batch_size=16, finetune_lr=1e-3, pretrain_lr=3e-3,
                 sst2_inputs_length=80, sst2_targets_length=8, dev_examples=0)
FULL = Settings(vocab_size=8192, embed_dim=256, num_layers=6, num_heads=4, num_kv_heads=2,
                head_dim=64, mlp_dim=1024, sliding_window=128, pretrain_steps=5000,
                pretrain_length=256, adapt_steps=1000, adapt_lengths=(128, 128), batch_size=64,
                finetune_steps=2000, finetune_batch_size=32, finetune_lr=3e-4, pretrain_lr=3e-3,
                sst2_inputs_length=96, sst2_targets_length=8, dev_examples=0)


def log(msg):
  print(f'[compare {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def _json(path, value=None):
  if value is None:
    with open(path) as f:
      return json.load(f)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return value


class Comparison:
  """The stages; each writes its output under `workdir` and is skipped when that exists."""

  def __init__(self, args, settings: Settings):
    self.args = args
    self.s = settings
    self.workdir = os.path.abspath(args.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.data_dir = os.path.abspath(args.data_dir)

  # -- configs --------------------------------------------------------------------------------

  def config(self, vocab_size):
    from trainer.model.config import TransformerConfig
    s = self.s
    return TransformerConfig(vocab_size=vocab_size, embed_dim=s.embed_dim, num_layers=s.num_layers,
                             num_heads=s.num_heads, num_kv_heads=s.num_kv_heads,
                             head_dim=s.head_dim, mlp_dim=s.mlp_dim,
                             query_pre_attn_scalar=s.head_dim, sliding_window=s.sliding_window)

  # -- stage 1: vocabulary and tasks ------------------------------------------------------------

  def corpus_files(self):
    files = [os.path.join(self.data_dir, 'tinyshakespeare', 'input.txt'),
             os.path.join(self.data_dir, 'wikitext-2', 'valid.txt')]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise SystemExit(f'compare: --data_dir={self.data_dir}: missing {missing}')
    return files

  def vocab(self):
    path = os.path.join(self.workdir, 'vocab', 'spm')
    if not os.path.isfile(path + '.model'):
      from tasks import vocab as vocab_lib
      log(f'training a {self.s.vocab_size}-piece SentencePiece vocabulary on the corpus')
      vocab_lib.train_vocabulary(input_files=self.corpus_files(), vocab_size=self.s.vocab_size,
                                 output_prefix=path)
    return path + '.model'

  def register_tasks(self):
    from tasks import downstream, pretraining, sources
    vocab_path = self.vocab()
    corpus = sources.CorpusSpec(name='compare_corpus', format='text', text_mode='paragraph',
                                splits={'train': tuple(self.corpus_files())})
    pretraining.register_corpus_tasks(corpus=corpus, vocabulary=vocab_path,
                                      objectives_to_register=('causal_lm', 'prefix_lm', 'ul2'),
                                      mixtures={})
    downstream.register_glue_tasks(data_dir=os.path.join(self.data_dir, 'glue'),
                                   vocabulary=vocab_path)
    from tasks import vocab as vocab_lib
    self.vocab_size = vocab_lib.get_vocabulary(vocab_path).vocab_size

  # -- training helper --------------------------------------------------------------------------

  def train(self, name, model, *, task, lengths, steps, batch_size, lr, seed=0,
            init_checkpoint=None, warmup=0):
    import optax
    from trainer.checkpoint import checkpoints
    from trainer.training import data
    from trainer.training import optimizers
    from trainer.training import loop as trainer
    model_dir = os.path.join(self.workdir, name)
    done = os.path.join(model_dir, 'DONE.json')
    if os.path.isfile(done):
      return model_dir, _json(done)
    if os.path.isdir(model_dir):
      shutil.rmtree(model_dir)  # an interrupted stage restarts from scratch (deterministic)
    log(f'{name}: training {type(model).__name__} on {task} for {steps} steps (batch '
        f'{batch_size}, lengths {lengths})')
    schedule = optimizers.create_schedule(base_learning_rate=lr, warmup_steps=warmup,
                                          decay='constant', total_steps=steps)
    start = time.time()
    result = trainer.train(
        model=model, model_dir=model_dir, total_steps=steps,
        optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)),
        learning_rate_fn=schedule,
        train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=task,
                                             task_feature_lengths=dict(lengths),
                                             batch_size=batch_size, seed=seed, pack=False),
        checkpoint_cfg=checkpoints.CheckpointConfig(period=0, keep=1, async_save=False,
                                                    save_on_signal=True),
        init_checkpoint=init_checkpoint, seed=seed, log_period=max(1, steps // 5),
        stream=sys.stdout)
    if result.interrupted:  # SIGTERM/SIGINT: the trainer saved a checkpoint; do not mark done
      raise SystemExit(f'compare: {name} interrupted at step {result.step}; rerun to redo it')
    losses = [result.losses[k] for k in sorted(result.losses)]
    info = {'first_loss': losses[0], 'last_loss': losses[-1], 'steps': result.step,
            'seconds': round(time.time() - start, 1), 'num_params': result.num_params}
    return model_dir, _json(done, info)

  # -- stage 2: pretraining and adaptation ------------------------------------------------------

  def pretrain(self):
    from trainer.training import models
    model = models.DecoderOnlyModel(config=self.config(self.vocab_size))
    return self.train('pretrain_causal_lm', model, task='compare_corpus_causal_lm',
                      lengths={'targets': self.s.pretrain_length}, steps=self.s.pretrain_steps,
                      batch_size=self.s.batch_size, lr=self.s.pretrain_lr,
                      warmup=self.s.pretrain_steps // 10)[0]

  def adapted(self, pretrained_dir):
    """Params-only checkpoint of the encoder-decoder adapted from the pretrained decoder."""
    out = os.path.join(self.workdir, 'adapted', 'params')
    if not os.path.isdir(out):
      import jax
      from flax.core import meta
      from trainer.adaptation import adapt
      from trainer.checkpoint import checkpoints
      from trainer.checkpoint import loader
      from trainer.training import models
      cfg = self.config(self.vocab_size)
      model = models.DecoderOnlyModel(config=cfg)
      abstract = meta.unbox(jax.eval_shape(
          model.init, jax.random.PRNGKey(0),
          {'decoder_input_tokens': jax.numpy.ones((1, 8), 'int32'),
           'decoder_target_tokens': jax.numpy.ones((1, 8), 'int32')}))
      abstract = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
              jax.local_devices()[0])), abstract)
      params = loader.restore_params(pretrained_dir, abstract)
      _, ed_params = adapt.adapt_params(cfg, params)
      checkpoints.save_params(out, ed_params)
      log(f'adapted the decoder-only checkpoint into an encoder-decoder: {out}')
    return out

  def encdec_model(self):
    from trainer.training import models
    from trainer.model.config import EncoderDecoderConfig
    cfg = self.config(self.vocab_size)
    return models.EncoderDecoderModel(config=EncoderDecoderConfig(encoder=cfg, decoder=cfg))

  def adapt_pretrain(self, objective, adapted_dir):
    inputs, targets = self.s.adapt_lengths
    return self.train(f'adapt_{objective}', self.encdec_model(),
                      task=f'compare_corpus_{objective}',
                      lengths={'inputs': inputs, 'targets': targets}, steps=self.s.adapt_steps,
                      batch_size=self.s.batch_size, lr=self.s.pretrain_lr / 3,
                      init_checkpoint=adapted_dir, warmup=self.s.adapt_steps // 10)[0]

  # -- stage 3: fine-tuning and evaluation ------------------------------------------------------

  def finetune_and_eval(self, name, model, *, seed, init_checkpoint, classifier):
    from trainer.evaluation import evaluate as eval_lib
    s = self.s
    if classifier:
      task, lengths = 'glue_sst2_classification', {'inputs': s.sst2_inputs_length}
    else:
      task = 'glue_sst2_text_to_text'
      lengths = {'inputs': s.sst2_inputs_length, 'targets': s.sst2_targets_length}
    model_dir, info = self.train(f'ft_{name}_seed{seed}', model, task=task, lengths=lengths,
                                 steps=s.finetune_steps, batch_size=s.finetune_batch_size,
                                 lr=s.finetune_lr, seed=seed, init_checkpoint=init_checkpoint,
                                 warmup=s.finetune_steps // 10)
    scoring = 'classifier_head' if classifier else 'label_words'
    result_file = os.path.join(model_dir, 'eval', f'eval_{task}_validation_task_{scoring}.json')
    if not os.path.isfile(result_file):
      eval_lib.evaluate(model=model, checkpoint_path=model_dir, mixture_or_task_name=task,
                        task_feature_lengths=lengths, scoring_method='label_words',
                        label_words=['negative', 'positive'], batch_size=64,
                        max_examples=s.dev_examples or None,
                        output_dir=os.path.join(model_dir, 'eval'))
    result = _json(result_file)
    result['train'] = info
    return result

  def finished(self, key, seed, classifier):
    task = 'glue_sst2_classification' if classifier else 'glue_sst2_text_to_text'
    model_dir = os.path.join(self.workdir, f'ft_{key}_seed{seed}')
    return (os.path.isfile(os.path.join(model_dir, 'DONE.json')) and
            os.path.isfile(os.path.join(
                model_dir, 'eval', f'eval_{task}_validation_task_'
                f'{"classifier_head" if classifier else "label_words"}.json')))

  # -- cost figures -----------------------------------------------------------------------------

  def dev_lengths(self):
    """Mean token counts of SST-2 dev inputs (text-to-text and classification forms) and label."""
    import numpy as np
    import seqio
    out = {}
    for task, key in (('glue_sst2_text_to_text', 'inputs'), ('glue_sst2_classification', 'inputs'),
                      ('glue_sst2_text_to_text', 'targets')):
      ds = seqio.get_mixture_or_task(task).get_dataset(None, split='validation', shuffle=False)
      n = [len(ex[key]) for ex in ds.as_numpy_iterator()]
      out[f'{task}:{key}'] = float(np.mean(n))
    return out

  def inference_flops(self, kind, lengths):
    from trainer.training import encoder_models
    from trainer.training import flops
    from trainer.model import heads
    from trainer.model.config import EncoderDecoderConfig
    cfg = self.config(self.vocab_size)
    li = lengths['glue_sst2_text_to_text:inputs']
    lt = lengths['glue_sst2_text_to_text:targets']
    if kind == 'decoder_only':
      return flops.decoder_only_training_flops(cfg, int(round(li + lt))) / 3.0
    if kind == 'encoder_decoder':
      return flops.encoder_decoder_training_flops(
          EncoderDecoderConfig(encoder=cfg, decoder=cfg), int(round(li)), int(round(lt))) / 3.0
    model = encoder_models.EncoderClassifierModel(config=cfg, head=heads.HeadConfig())
    return model.inference_flops_per_example(int(round(lengths['glue_sst2_classification:inputs'])))

  # -- the whole thing --------------------------------------------------------------------------

  def run(self):
    from trainer.training import encoder_models
    from trainer.training import models
    self.register_tasks()
    if self.args.report_only and not os.path.isfile(
        os.path.join(self.workdir, 'pretrain_causal_lm', 'DONE.json')):
      raise SystemExit('compare: --report_only but nothing is pretrained in --workdir yet')
    pretrained = self.pretrain()
    adapted = self.adapted(pretrained)
    starts = {'prefix_lm': self.adapt_pretrain('prefix_lm', adapted),
              'ul2': self.adapt_pretrain('ul2', adapted)}
    cfg = self.config(self.vocab_size)
    rows = {}
    for seed in self.args.seeds:
      systems = [('decoder_only', 'decoder-only (PrefixLM fine-tune)',
                  models.DecoderOnlyModel(config=cfg, prefix_lm=True), pretrained, False)]
      for objective in ('prefix_lm', 'ul2'):
        systems.append((f'encdec_{objective}', f'encoder-decoder, adapted + {objective}',
                        self.encdec_model(), starts[objective], False))
      for pooler in POOLERS:
        systems.append((f'encoder_{pooler}', f'encoder, {pooler} pooling',
                        encoder_models.EncoderClassifierModel(
                            config=cfg, pooler=pooler, pooled_dropout_rate=0.1,
                            pretrained_checkpoint=pretrained), None, True))
      for key, label, model, init, classifier in systems:
        if self.args.only and not any(o in key for o in self.args.only):
          continue
        if self.args.report_only and not self.finished(key, seed, classifier):
          log(f'{key} seed {seed}: not measured yet (--report_only), left out of the table')
          continue
        result = self.finetune_and_eval(key, model, seed=seed, init_checkpoint=init,
                                        classifier=classifier)
        row = rows.setdefault(key, {'label': label, 'accuracy': [], 'num_params': None,
                                    'kind': 'encoder' if classifier else (
                                        'decoder_only' if key == 'decoder_only'
                                        else 'encoder_decoder'),
                                    'scoring': result['scoring'], 'eval_examples': None})
        row['accuracy'].append(result['metrics']['accuracy'])
        row['num_params'] = result['train']['num_params']
        row['eval_examples'] = result['num_examples']
        log(f'{key} seed {seed}: accuracy {result["metrics"]["accuracy"]:.2f}')
    lengths = self.dev_lengths()
    for row in rows.values():
      row['inference_flops'] = self.inference_flops(row['kind'], lengths)
    summary = {'settings': dataclasses.asdict(self.s), 'seeds': list(self.args.seeds),
               'dev_mean_lengths': lengths, 'rows': rows,
               'pretrain': _json(os.path.join(pretrained, 'DONE.json')),
               'adapt': {k: _json(os.path.join(v, 'DONE.json')) for k, v in starts.items()}}
    _json(os.path.join(self.workdir, 'summary.json'), summary)
    table = markdown_table(summary)
    print(table)
    if self.args.markdown:
      write_markdown(self.args.markdown, summary, table, sys.argv)
    return summary


def _mean_std(values):
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return mean, std


def markdown_table(summary):
  lines = ['| system | SST-2 dev accuracy (mean +- std) | seeds | parameters | '
           'inference FLOPs / example | scored by |',
           '|---|---|---|---|---|---|']
  for key, row in summary['rows'].items():
    mean, std = _mean_std(row['accuracy'])
    lines.append(f"| {row['label']} | {mean:.2f} +- {std:.2f} | {len(row['accuracy'])} | "
                 f"{row['num_params']:,} | {row['inference_flops']:.3g} | {row['scoring']} |")
  return '\n'.join(lines)


def write_markdown(path, summary, table, argv):
  s = summary['settings']
  per_seed = '\n'.join(f"- {row['label']}: " + ', '.join(f'{a:.2f}' for a in row['accuracy'])
                       for row in summary['rows'].values())
  text = f"""# Scaled-down comparison (measured)

Generated by `python scripts/compare.py {' '.join(argv[1:])}` (see the bottom of this page for the
commands). All numbers below were measured by that run; nothing is extrapolated.

{table}

Per-seed accuracies (%):
{per_seed}

Setup: one decoder-only model ({s['num_layers']} layers, d={s['embed_dim']}, {s['num_heads']}
heads / {s['num_kv_heads']} KV heads, head_dim {s['head_dim']}, MLP {s['mlp_dim']}, vocabulary
{s['vocab_size']} pieces trained on the corpus) pretrained with causal LM for
{s['pretrain_steps']} steps x {s['batch_size']} x {s['pretrain_length']} tokens on tinyshakespeare +
wikitext-2 (valid). Adapted encoder-decoders: {s['adapt_steps']} further steps x {s['batch_size']}
x ({s['adapt_lengths'][0]} + {s['adapt_lengths'][1]}) tokens of PrefixLM or of UL2 (the same token
budget). Fine-tuning: {s['finetune_steps']} steps x {s['finetune_batch_size']} SST-2 training
examples (AdamW, lr {s['finetune_lr']}), inputs truncated to {s['sst2_inputs_length']} tokens.
Evaluation on SST-2 dev ({summary['rows'][next(iter(summary['rows']))]['eval_examples']}
examples): generative models by label-word scoring (log p('negative' | x) vs log p('positive' | x)),
encoders by their classification head.
Inference FLOPs: one forward pass per example at the mean dev lengths
({', '.join(f'{k} {v:.1f}' for k, v in summary['dev_mean_lengths'].items())} tokens), counted
as in trainer/flops.py (training figure / 3); label-word scoring runs one such pass per candidate
label (2 for SST-2). Parameters include embeddings.

Pretraining loss (causal LM): {summary['pretrain']['first_loss']:.3f} -> {summary['pretrain']['last_loss']:.3f};
PrefixLM: {summary['adapt']['prefix_lm']['first_loss']:.3f} -> {summary['adapt']['prefix_lm']['last_loss']:.3f};
UL2: {summary['adapt']['ul2']['first_loss']:.3f} -> {summary['adapt']['ul2']['last_loss']:.3f}.
"""
  with open(path, 'w') as f:
    f.write(text)
  log(f'wrote {path}')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared', 'data'))
  parser.add_argument('--quick', action='store_true', help='the tiny CPU setting')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--only', nargs='*', default=None,
                      help='run only systems whose key contains one of these strings')
  parser.add_argument('--finetune_steps', type=int, default=None)
  parser.add_argument('--pretrain_steps', type=int, default=None)
  parser.add_argument('--adapt_steps', type=int, default=None)
  parser.add_argument('--dev_examples', type=int, default=None, help='0 = all 872')
  parser.add_argument('--markdown', default=None, help='write the results page here')
  parser.add_argument('--report_only', action='store_true',
                      help='train nothing: tabulate the fine-tunes already finished in --workdir '
                           '(e.g. while other processes run other --seeds)')
  args = parser.parse_args(argv)
  settings = QUICK if args.quick else FULL
  overrides = {k: getattr(args, k) for k in ('finetune_steps', 'pretrain_steps', 'adapt_steps',
                                               'dev_examples') if getattr(args, k) is not None}
  settings = dataclasses.replace(settings, **overrides)
  if len(args.seeds) < 1:
    raise SystemExit('compare: --seeds needs at least one seed')
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)
  Comparison(args, settings).run()
  return 0


if __name__ == '__main__':
  sys.exit(main())
