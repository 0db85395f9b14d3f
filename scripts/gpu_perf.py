r"""GPU performance run for issue 7: attention microbenchmark, train-step MFU, lever comparisons.

Runs on a GPU machine with JAX (no TensorFlow is imported, here or in what this imports) and
prints markdown tables. Three parts, each fits one 10-minute device command:

  python scripts/gpu_perf.py --part=attention   # reference vs fused, fwd+bwd at 4096 tokens
  python scripts/gpu_perf.py --part=shapes      # train-step MFU, three model shapes
  python scripts/gpu_perf.py --part=levers      # one shape, one lever changed at a time
  python scripts/gpu_perf.py --part=compile     # any backend: compile time + XLA memory analysis
                                                # of the train step, scan / bf16 / master variants

Attention: Gemma 2 2B heads (8 query / 4 kv, head_dim 256), bf16, 4096 tokens per row, logit
soft-cap 50, two packed segments per row (3072 + 1024 tokens). FLOP/s count only the (query, key)
pairs the mask lets through (`mask.materialize(...).sum()`), 4 * H * Dh FLOPs per pair forward
and 3x that for forward + backward (the backward's two extra matmul pairs), so masked-out work
is never counted as done. The fused output and gradients are checked against the reference
(bf16 tolerance) on rows that see a key, and a failed check is printed in the table.

Train steps: each run is `python -m trainer.bench` in a subprocess (fresh XLA flags, clean
memory; an OOM or a missing option is a row with its error, not a crash) and the table shows
what that tool prints (step time, tokens/s, TFLOP/s, MFU by `trainer/flops.py`).

Every lever is a gin binding of the trainer (`attention_impl`, `REMAT`, `loss_chunk_size`,
`SCAN_LAYERS`, `PARAM_DTYPE` + `benchmark.master_dtype`, XLA flags); a binding the trainer rejects
shows as that row's one-line error.
"""
import argparse
import os
import re
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# (label, gin model file, bench bindings): decoder-only Gemma 2 2B at 4096 (PrefixLM-length rows),
# T5Gemma 2B-2B at 2048/2048 (the shape), and the same at 1024/1024 with a bigger batch.
SHAPES = (
    ('gemma2_2b L4096 b2', 'gin/models/gemma2_2b.gin',
     ['benchmark.batch_size=2', 'benchmark.length=4096']),
    ('t5gemma_2b_2b 2048/2048 b2', 'gin/models/t5gemma_2b_2b.gin',
     ['benchmark.batch_size=2', 'benchmark.length=2048', 'benchmark.encoder_length=2048']),
    ('t5gemma_2b_2b 1024/1024 b4', 'gin/models/t5gemma_2b_2b.gin',
     ['benchmark.batch_size=4', 'benchmark.length=1024', 'benchmark.encoder_length=1024']),
)
LEVER_SHAPE = SHAPES[1]
_XLA_TUNED = ('--xla_gpu_enable_latency_hiding_scheduler=true '
              '--xla_gpu_enable_highest_priority_async_stream=true '
              '--xla_gpu_enable_command_buffer=')
# (label, extra gin bindings, extra env)
LEVERS = (
    ('baseline (reference attention, remat none)', [], {}),
    ('remat dots', ["REMAT='dots'"], {}),
    ('remat full', ["REMAT='full'"], {}),
    ('fused attention', ["config.TransformerConfig.attention_impl='fused'"], {}),
    ('chunked loss (2048 tokens/chunk)',
     ['models.EncoderDecoderModel.loss_chunk_size=2048'], {}),
    ('fused + chunked + remat dots',
     ["config.TransformerConfig.attention_impl='fused'",
      'models.EncoderDecoderModel.loss_chunk_size=2048', "REMAT='dots'"], {}),
    ('bf16 params', ["PARAM_DTYPE='bfloat16'"], {}),
    ('XLA flags: latency-hiding scheduler, no command buffers', [], {'XLA_FLAGS': _XLA_TUNED}),
    ('scan over layers', ['SCAN_LAYERS=True'], {}),
    ('bf16 params + fp32 master copy',
     ["PARAM_DTYPE='bfloat16'", "benchmark.master_dtype='float32'"], {}),
)
# --part=compile (any backend, nothing is run): (label, extra gin bindings, optimizer master_dtype).
COMPILE_VARIANTS = (
    ('unrolled, fp32 params', [], None),
    ('scan over layers, fp32 params', ['SCAN_LAYERS = True'], None),
    ('unrolled, bf16 params', ["PARAM_DTYPE = 'bfloat16'"], None),
    ('unrolled, bf16 params + fp32 master', ["PARAM_DTYPE = 'bfloat16'"], 'float32'),
    ('unrolled, remat dots', ["REMAT = 'dots'"], None),
    ('scan over layers, remat dots', ["REMAT = 'dots'", 'SCAN_LAYERS = True'], None),
)


# ---------------------------------------------------------------------------------------------
# Attention microbenchmark (in process).

def _time(fn, *args, iters):
  import jax  # pylint: disable=g-import-not-at-top
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def attention_part(*, batch: int, length: int, window, iters: int) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trainer.model import attention  # pylint: disable=g-import-not-at-top
  from trainer.model import fused_attention  # pylint: disable=g-import-not-at-top

  heads, kv_heads, head_dim, cap = 8, 4, 256, 50.0
  scale = head_dim**-0.5
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim), jnp.bfloat16)
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), jnp.bfloat16)
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), jnp.bfloat16)
  w = jax.random.normal(keys[3], q.shape, jnp.bfloat16)
  first = (3 * length) // 4
  seg = jnp.asarray(np.broadcast_to(
      np.where(np.arange(length) < first, 1, 2).astype(np.int32), (batch, length)))
  cases = [('decoder causal', dict(causal=True, sliding_window=None)),
           (f'decoder causal window {window}', dict(causal=True, sliding_window=window)),
           (f'encoder bidirectional window {window}', dict(causal=False, sliding_window=window))]
  rows = []
  for label, kw in cases:
    mask = attention.AttentionMask(q_segment_ids=seg, kv_segment_ids=seg, **kw)
    pairs = float(jnp.sum(jnp.broadcast_to(mask.materialize(length, length),
                                           (batch, length, length))))
    flops = 3 * 4 * heads * head_dim * pairs

    def make(kernel):
      def loss(q, k, v):
        out = kernel(q, k, v, mask=mask, scale=scale, soft_cap=cap)
        return jnp.sum(out.astype(jnp.float32) * w)
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    results = {}
    for name, kernel in (('reference', attention.reference_attention),
                         ('fused', fused_attention.fused_attention)):
      fused_attention._WARNED.clear()  # pylint: disable=protected-access
      try:
        step = make(kernel)
        seconds = _time(step, q, k, v, iters=iters)
        results[name] = (seconds, step(q, k, v))
        if name == 'fused' and fused_attention._WARNED:  # pylint: disable=protected-access
          fell_back = '; '.join(sorted(fused_attention._WARNED))  # pylint: disable=protected-access
          results[name] = (None, f'FELL BACK to the reference: {fell_back}')
      except Exception as e:  # pylint: disable=broad-except  (an OOM is a row, not a crash)
        results[name] = (None, f'{type(e).__name__}: {str(e).splitlines()[0][:120]}')
    check = 'n/a'
    if all(isinstance(r[1], tuple) for r in results.values()):
      (_, ref_g), (_, got_g) = results['reference'][1], results['fused'][1]
      errs = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) /
                    max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))), 1e-6))
              for a, b in zip(got_g, ref_g)]
      check = ('ok' if max(errs) < 5e-2 else 'MISMATCH') + (
          ' (rel. max err dq %.1e dk %.1e dv %.1e)' % tuple(errs))
    for name in ('reference', 'fused'):
      seconds, info = results[name]
      if seconds is None:
        rows.append((label, name, '-', '-', info))
      else:
        rows.append((label, name, f'{seconds * 1e3:.2f}', f'{flops / seconds / 1e12:.1f}',
                     check if name == 'fused' else ''))
  return rows


# ---------------------------------------------------------------------------------------------
# Compile-time figures of the train step (in process; abstract arrays, so nothing is allocated).

def compile_part(gin_file: str, bindings, *, batch_size: int, length: int,
                 encoder_length: int, variants=COMPILE_VARIANTS) -> list:
  """Per variant: seconds to lower + compile the train step (adafactor, donated state), XLA's
  `memory_analysis()` of the compiled step, and the train state's bytes (params + optimiser
  state, from shapes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from trainer import gin_flags
  from trainer.training import benchmark as bench
  from trainer.training import models
  from trainer.training import optimizers
  from trainer.training import loop as trainer
  from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
  from trainer.training.train_state import TrainState  # pylint: disable=g-import-not-at-top

  def nbytes(tree):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))

  gib = lambda n: f'{n / 2**30:.2f}'
  rows = []
  for label, extra, master_dtype in variants:
    try:
      config = gin_flags.config_from_gin([gin_file], list(bindings) + list(extra))
      model_cls = (models.EncoderDecoderModel if isinstance(config, EncoderDecoderConfig)
                   else models.DecoderOnlyModel)
      model = model_cls(config=config)
      vocab = (config.decoder if isinstance(config, EncoderDecoderConfig) else config).vocab_size
      batch = bench.synthetic_batch(model, batch_size=batch_size, length=length,
                                    encoder_length=encoder_length, vocab_size=vocab, seed=0)
      abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
      dummy = {k: v[:1] for k, v in batch.items()}
      params = meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy))
      tx = optimizers.create_optimizer(name='adafactor', learning_rate=1e-3,
                                       master_dtype=master_dtype)
      state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                         opt_state=jax.eval_shape(tx.init, params),
                         rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
      step = jax.jit(trainer.make_train_step(model, tx), donate_argnums=(0,))
      t0 = time.perf_counter()
      compiled = step.lower(state, abstract_batch).compile()
      seconds = time.perf_counter() - t0
      mem = compiled.memory_analysis()
      rows.append((label, f'{seconds:.1f}', gib(mem.temp_size_in_bytes),
                   gib(mem.argument_size_in_bytes), gib(nbytes(state.params)),
                   gib(nbytes(state.opt_state))))
    except Exception as e:  # pylint: disable=broad-except  (one failed variant is a row)
      error = f'{type(e).__name__}: {str(e).splitlines()[0][:120]}'
      rows.append((label, '-', '-', '-', '-', error))
    print(f'# done: {label} -> {rows[-1][1:]}', flush=True)
  return rows


# ---------------------------------------------------------------------------------------------
# Train steps (subprocesses running trainer.bench).

_STEP = re.compile(r'step time ([\d.]+) ms \| ([\d,]+) tokens/s \| ([\d.]+) TFLOP/s \| MFU (\S+)')


def bench_run(gin_file: str, bindings, env_extra, *, steps: int, timeout: int) -> tuple:
  cmd = [sys.executable, '-m', 'trainer.bench', f'--gin_file={gin_file}',
         f'--gin.benchmark.steps={steps}'] + [f'--gin.{b}' for b in bindings]
  env = dict(os.environ, **env_extra)
  t0 = time.perf_counter()
  try:
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
  except subprocess.TimeoutExpired:
    return ('-', '-', '-', '-', f'timed out after {timeout} s')
  text = out.stdout + out.stderr
  match = _STEP.search(text)
  if out.returncode != 0 or not match:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    err = next((l for l in reversed(lines) if 'Error' in l or 'error' in l),
               lines[-1] if lines else f'exit {out.returncode}')
    return ('-', '-', '-', '-', err.strip()[:160])
  ms, tokens, tflops, mfu = match.groups()
  return (ms, tokens, tflops, mfu, f'wall {time.perf_counter() - t0:.0f} s')


def _table(header, rows):
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--part', choices=('attention', 'shapes', 'levers', 'compile', 'all'),
                      default='all', help="'compile' (not in 'all') runs on any backend")
  parser.add_argument('--attention_batch', type=int, default=2)
  parser.add_argument('--attention_length', type=int, default=4096)
  parser.add_argument('--attention_window', type=int, default=1024)
  parser.add_argument('--iters', type=int, default=10)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--run_timeout', type=int, default=240)
  parser.add_argument('--levers', default='',
                      help='comma-separated LEVERS indices to run (default: all), e.g. 0,1,2,3')
  parser.add_argument('--compile_gin_file', default=LEVER_SHAPE[1])
  parser.add_argument('--compile_binding', action='append', default=[],
                      help="extra gin binding for --part=compile, e.g. 'VOCAB_SIZE = 32000'")
  parser.add_argument('--compile_variants', default='',
                      help='comma-separated COMPILE_VARIANTS indices (default: all), e.g. 0,1')
  parser.add_argument('--compile_batch', type=int, default=2)
  parser.add_argument('--compile_length', type=int, default=2048)
  parser.add_argument('--compile_encoder_length', type=int, default=2048)
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  print(f'# gpu_perf: {jax.device_count()} x {jax.devices()[0].device_kind}, jax '
        f'{jax.__version__}', flush=True)
  if args.part in ('attention', 'all'):
    rows = attention_part(batch=args.attention_batch, length=args.attention_length,
                          window=args.attention_window, iters=args.iters)
    print(f'\n## Attention fwd+bwd, bf16, B={args.attention_batch} L={args.attention_length} '
          'H=8 K=4 Dh=256 soft-cap 50, 2 segments/row\n')
    print(_table(('mask', 'impl', 'ms', 'TFLOP/s (visible pairs)', 'check vs reference'), rows),
          flush=True)
  if args.part in ('shapes', 'all'):
    rows = []
    for label, gin_file, bindings in SHAPES:
      rows.append((label,) + bench_run(gin_file, bindings, {}, steps=args.steps,
                                       timeout=args.run_timeout))
      print(f'# done: {label} -> {rows[-1][1:]}', flush=True)
    print('\n## Train step (trainer.bench, adafactor, bf16 compute, fp32 params)\n')
    print(_table(('shape', 'step ms', 'tokens/s', 'TFLOP/s', 'MFU', 'note'), rows), flush=True)
  if args.part in ('levers', 'all'):
    label, gin_file, bindings = LEVER_SHAPE
    rows = []
    chosen = ([LEVERS[int(i)] for i in args.levers.split(',') if i.strip()] if args.levers
              else LEVERS)
    for lever, extra, env in chosen:
      rows.append((lever,) + bench_run(gin_file, bindings + extra, env, steps=args.steps,
                                       timeout=args.run_timeout))
      print(f'# done: {lever} -> {rows[-1][1:]}', flush=True)
    print(f'\n## Levers on {label} (one change at a time from the baseline)\n')
    print(_table(('lever', 'step ms', 'tokens/s', 'TFLOP/s', 'MFU', 'note'), rows), flush=True)
  if args.part == 'compile':
    variants = ([COMPILE_VARIANTS[int(i)] for i in args.compile_variants.split(',') if i.strip()]
                if args.compile_variants else COMPILE_VARIANTS)
    rows = compile_part(args.compile_gin_file, args.compile_binding,
                        batch_size=args.compile_batch, length=args.compile_length,
                        encoder_length=args.compile_encoder_length, variants=variants)
    print(f'\n## Train step compiled on {jax.default_backend()}: {args.compile_gin_file} '
          f'{args.compile_binding} batch {args.compile_batch}, length {args.compile_length} '
          f'(encoder {args.compile_encoder_length}), adafactor\n')
    print(_table(('variant', 'compile s', 'XLA temp GiB', 'XLA arguments GiB', 'params GiB',
                  'optimizer state GiB'), rows), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
