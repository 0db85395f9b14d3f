r"""Train-step speed on CPU, ours against `transformers`, side by side in one process:

  python scripts/cpu_step_bench.py [--gin_file=gin/models/t5gemma_small.gin] [--vocab_size=8000]
      [--batch=8] [--length=256] [--steps=7] [--warmup=2] [--variants=cpu,plain] [--skip_torch]

Same model (the gin file's T5Gemma shapes, random weights exported with
`hf_t5gemma.export_t5gemma`, so both sides hold the same numbers), same batch (`--batch` rows of
`--length` encoder + `--length` decoder tokens), AdamW on both sides, fp32:

* ours: the trainer's real train step (`trainer.training.loop.make_train_step`: loss with z-loss,
  gradients, global grad norm, clipping, AdamW), jitted, once per variant:
  `cpu` = the default on CPU (contractions as 2-D matmuls, `trainer.model.matmul`),
  `cpu_einsum_attention` = the same with the reference attention in its einsum form
  (`reference_attention.heads_major(False)`, what CPU ran before session 8),
  `plain` = the same step traced with `matmul.flat_dots(False)` (the `dot_general` form the model
  had before; what GPU/TPU run).
* torch: `T5GemmaForConditionalGeneration` (eager attention, train mode, dropout 0) forward with
  `labels`, backward, `torch.optim.AdamW.step`, with `torch.set_num_threads(--threads)` (default:
  `os.cpu_count()`, as XLA's CPU client). On a loaded machine torch's 2 OpenMP threads wait on
  each other (see docs/performance.md); `--threads=1` shows torch's single-thread work.

After `--warmup` untimed steps each, the systems take turns, one step each per round, for
`--steps` rounds, so a load change on a shared machine hits every system alike. Printed per
system: median and min wall seconds per step, process CPU seconds per step (all threads;
less sensitive to other processes than wall time), and speed relative to torch (torch median /
ours median). `--forward` adds a forward-only row per system (loss, no gradients).

XLA flags are the process's (`XLA_FLAGS`); run the script once per flag set to compare them. glibc
malloc is tuned as the trainer's entry points tune it (`trainer/host_malloc.py`; it applies to
torch's allocations too); `GEMMA_ADAPT_HOST_MALLOC=0` runs with glibc's defaults.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from trainer import host_malloc  # pylint: disable=g-import-not-at-top
_MALLOC_TUNED = host_malloc.tune_for_cpu()  # as the entry points; GEMMA_ADAPT_HOST_MALLOC=0: off

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax.core import meta  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer.checkpoint import hf_t5gemma  # pylint: disable=g-import-not-at-top
from trainer.model import matmul  # pylint: disable=g-import-not-at-top
from trainer.model import reference_attention  # pylint: disable=g-import-not-at-top
from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
from trainer.training import loop  # pylint: disable=g-import-not-at-top
from trainer.training import models  # pylint: disable=g-import-not-at-top
from trainer.training import optimizers  # pylint: disable=g-import-not-at-top
from trainer.training.benchmark import synthetic_batch  # pylint: disable=g-import-not-at-top
from trainer.training.train_state import TrainState  # pylint: disable=g-import-not-at-top

# name -> (matmul.flat_dots, reference_attention.heads_major) arguments
VARIANTS = {'cpu': (None, None), 'cpu_einsum_attention': (None, False), 'plain': (False, None)}


def _timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


class _Ours:
  """The trainer's train step for one variant (traced under its `flat_dots` setting)."""

  def __init__(self, model, params, batch, variant, lr):
    self.tx = optimizers.create_optimizer(name='adamw', learning_rate=lr)
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params = jax.tree_util.tree_map(jnp.array, params)  # own copy: the step donates its state
    self.state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=jax.jit(self.tx.init)(params), rng=jax.random.PRNGKey(0))
    flat, heads_major = VARIANTS[variant]
    with matmul.flat_dots(flat), reference_attention.heads_major(heads_major):
      self.step_fn = jax.jit(loop.make_train_step(model, self.tx), donate_argnums=(0,)).lower(
          self.state, self.batch).compile()
      self.loss_fn = jax.jit(lambda p, b: model.loss_fn(p, b, None)[0]).lower(
          params, self.batch).compile()
    self.loss = None

  def step(self):
    self.state, metrics = self.step_fn(self.state, self.batch)
    self.loss = float(metrics['loss'][0] / metrics['loss'][1])

  def forward(self):
    jax.block_until_ready(self.loss_fn(self.state.params, self.batch))


class _Torch:
  """transformers' T5GemmaForConditionalGeneration train step (forward + backward + AdamW)."""

  def __init__(self, hf_dir, batch, threads, lr):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.set_num_threads(threads)
    self.model = transformers.T5GemmaForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation='eager')
    self.model.train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
    def t(key):
      return torch.tensor(np.asarray(batch[key]), dtype=torch.long)
    self.inputs = dict(input_ids=t('encoder_input_tokens'),
                       attention_mask=(t('encoder_input_tokens') != 0).long(),
                       decoder_input_ids=t('decoder_input_tokens'),
                       labels=t('decoder_target_tokens'))
    self.loss = None

  def step(self):
    out = self.model(**self.inputs)
    out.loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    self.loss = float(out.loss.detach())

  def forward(self):
    with self.torch.no_grad():
      self.model(**self.inputs)


def _random_params(model, batch):
  one_row = {k: v[:1] for k, v in batch.items()}
  params = meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), one_row))
  rng = np.random.RandomState(0)
  # Non-zero norm scales too (they start at 0), so no layer is an identity on either side.
  return jax.tree_util.tree_map_with_path(
      lambda p, x: np.asarray(x) + (0.1 * rng.randn(*x.shape).astype(np.float32)
                                    if 'scale' in jax.tree_util.keystr(p) else 0), params)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--gin_file', default='gin/models/t5gemma_small.gin')
  ap.add_argument('--vocab_size', type=int, default=8000)
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--length', type=int, default=256)
  ap.add_argument('--steps', type=int, default=7)
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--variants', default='cpu,plain')
  ap.add_argument('--threads', type=int, default=0, help='torch threads (0: os.cpu_count())')
  ap.add_argument('--forward', action='store_true', help='also time forward-only passes')
  ap.add_argument('--skip_torch', action='store_true')
  args = ap.parse_args(argv)
  variants = [v for v in args.variants.split(',') if v]
  for v in variants:
    if v not in VARIANTS:
      ap.error(f'--variants: unknown {v!r}; expected a subset of {",".join(VARIANTS)}')
  config = gin_flags.config_from_gin([os.path.join(REPO, args.gin_file)],
                                     [f'VOCAB_SIZE = {args.vocab_size}'])
  if not isinstance(config, EncoderDecoderConfig):
    ap.error(f'--gin_file must define a T5Gemma encoder-decoder, got {type(config).__name__}')
  model = models.EncoderDecoderModel(config=config, z_loss=1e-4)
  batch = synthetic_batch(model, batch_size=args.batch, length=args.length,
                          encoder_length=args.length, vocab_size=args.vocab_size, seed=0)
  params = _random_params(model, batch)
  lr = 1e-4
  systems = {}
  for v in variants:
    t0 = time.perf_counter()
    systems[f'ours ({v})'] = _Ours(model, params, batch, v, lr)
    print(f'# compiled ours ({v}) in {time.perf_counter() - t0:.1f} s', flush=True)
  if not args.skip_torch:
    hf_dir = tempfile.mkdtemp(prefix='cpu_step_bench_')
    hf_t5gemma.export_t5gemma(params, config, hf_dir)
    systems['torch (transformers)'] = _Torch(hf_dir, batch, args.threads or os.cpu_count(), lr)
  for system in systems.values():
    for _ in range(args.warmup):
      system.step()
  times = {name: [] for name in systems}
  fwd = {name: [] for name in systems}
  for _ in range(args.steps):
    for name, system in systems.items():
      times[name].append(_timed(system.step))
      if args.forward:
        fwd[name].append(_timed(system.forward))

  if args.skip_torch:
    torch_text = 'torch skipped'
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch_text = f'torch {torch.__version__} ({torch.get_num_threads()} threads)'
  enc = config.encoder
  print(f'\n# Train step on CPU: {os.path.basename(args.gin_file)} ({enc.num_layers}+'
        f'{config.decoder.num_layers} layers, d {enc.embed_dim}, vocab {args.vocab_size}), batch '
        f'{args.batch}, {args.length}+{args.length} tokens, AdamW, fp32; {os.cpu_count()} CPU '
        f'cores; jax {jax.__version__}, {torch_text}; '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; host malloc tuned: {_MALLOC_TUNED}; '
        f'median of {args.steps} interleaved steps after {args.warmup} warmup; 1-min load '
        f'average at the end '
        f'{os.getloadavg()[0]:.1f}')
  ref = (None if args.skip_torch else
         statistics.median(w for w, _ in times['torch (transformers)']))
  print('| system | step s (median) | step s (min) | CPU s / step | speed vs torch | loss |')
  print('|---|---|---|---|---|---|')
  for name, system in systems.items():
    wall = [w for w, _ in times[name]]
    cpu = statistics.median(c for _, c in times[name])
    med = statistics.median(wall)
    rel = f'{ref / med:.2f}x' if ref else '-'
    print(f'| {name} | {med:.3f} | {min(wall):.3f} | {cpu:.2f} | {rel} | {system.loss:.4f} |')
  if args.forward:
    print('\n| system | forward s (median) | step / forward |')
    print('|---|---|---|')
    for name in systems:
      f = statistics.median(w for w, _ in fwd[name])
      print(f'| {name} | {f:.3f} | {statistics.median(w for w, _ in times[name]) / f:.1f} |')
  sys.stdout.flush()


if __name__ == '__main__':
  main()
