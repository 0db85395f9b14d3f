"""The in-process parts of scripts/gpu_perf.py: attention microbenchmark, train-step compile.

`attention_part` times fwd+bwd of the reference and the fused attention kernel and checks the fused
gradients against the reference; `compile_part` lowers and compiles the train step from abstract
arrays (nothing allocated or run) and reports compile seconds and XLA's memory analysis. Both
return rows; `scripts/gpu_perf.py` schedules them (as subprocesses, within a budget) and writes
the results. No TensorFlow, seqio or Beam is imported.
"""
import time

ROW_KEYS = ('id', 'part', 'label', 'model', 'length', 'encoder_length', 'batch', 'settings',
            'step_time_s', 'tokens_per_s', 'mfu', 'tflops', 'check', 'compile_s', 'wall_s',
            'error', 'command')
# --part=compile (any backend, nothing is run): (label, extra gin bindings, optimizer master_dtype).
COMPILE_VARIANTS = (
    ('unrolled, fp32 params', [], None),
    ('scan over layers, fp32 params', ['SCAN_LAYERS = True'], None),
    ('unrolled, bf16 params', ["PARAM_DTYPE = 'bfloat16'"], None),
    ('unrolled, bf16 params + fp32 master', ["PARAM_DTYPE = 'bfloat16'"], 'float32'),
    ('unrolled, remat dots', ["REMAT = 'dots'"], None),
    ('scan over layers, remat dots', ["REMAT = 'dots'", 'SCAN_LAYERS = True'], None),
)


def new_row(**fields) -> dict:
  unknown = set(fields) - set(ROW_KEYS)
  if unknown:
    raise ValueError(f'unknown row fields {sorted(unknown)}')
  row = dict.fromkeys(ROW_KEYS)
  row.update(fields)
  return row


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:160] if text else ""}'


# ---------------------------------------------------------------------------------------------
# Attention microbenchmark (in process; `--part=all` runs it as a subprocess).

def _time(fn, *args, iters):
  import jax  # pylint: disable=g-import-not-at-top
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def attention_part(*, batch: int, length: int, window, iters: int, peak_flops=None,
                   deadline=None, emit=None) -> list:
  """Rows (reference, fused) for three masks; `emit(rows)` after each mask; a mask is not started
  past `deadline` (time.time())."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from trainer.model import attention  # pylint: disable=g-import-not-at-top
  from trainer.model import fused_attention  # pylint: disable=g-import-not-at-top
  from trainer.training import flops as flops_lib  # pylint: disable=g-import-not-at-top

  peak = peak_flops or flops_lib.peak_flops_per_device()
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
    common = dict(part='attention', model='gemma2_2b', length=length, batch=batch,
                  settings=[f'{k}={v}' for k, v in kw.items()] + ['soft_cap=50', 'bf16'])
    if deadline is not None and time.time() > deadline:
      rows += [new_row(id='attention', label=f'{label}, {name}', error='skipped: budget spent',
                       **common) for name in ('reference', 'fused')]
      continue
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
      t0 = time.perf_counter()
      try:
        step = make(kernel)
        seconds = _time(step, q, k, v, iters=iters)
        results[name] = (seconds, step(q, k, v), time.perf_counter() - t0)
        if name == 'fused' and fused_attention._WARNED:  # pylint: disable=protected-access
          fell_back = '; '.join(sorted(fused_attention._WARNED))  # pylint: disable=protected-access
          results[name] = (None, f'FELL BACK to the reference: {fell_back}', None)
      except Exception as e:  # pylint: disable=broad-except  (an OOM is a row, not a crash)
        results[name] = (None, _one_line(e), time.perf_counter() - t0)
    check = None
    if all(r[0] is not None for r in results.values()):
      (_, ref_g), (_, got_g) = results['reference'][1], results['fused'][1]
      errs = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) /
                    max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))), 1e-6))
              for a, b in zip(got_g, ref_g)]
      check = ('ok' if max(errs) < 5e-2 else 'MISMATCH') + (
          ' (rel. max err dq %.1e dk %.1e dv %.1e)' % tuple(errs))
    for name in ('reference', 'fused'):
      seconds, info, wall = results[name]
      row = new_row(id='attention', label=f'{label}, {name}', wall_s=wall, **common)
      if seconds is None:
        row['error'] = info
      else:
        tflops = flops / seconds / 1e12
        row.update(step_time_s=seconds, tokens_per_s=batch * length / seconds, tflops=tflops,
                   mfu=100 * tflops * 1e12 / peak if peak else None,
                   check='reference' if name == 'reference' else check)
      rows.append(row)
    if emit:
      emit(rows)
  return rows


# ---------------------------------------------------------------------------------------------
# Compile-time figures of the train step (in process; abstract arrays, so nothing is allocated).

def abstract_train_step(gin_file: str, bindings, *, batch_size: int, length: int,
                        encoder_length: int, master_dtype=None):
  """(jitted train step with donated state, abstract train state, abstract batch) of a gin model:
  adafactor, shapes only (nothing allocated); what the compile figures here and
  `scripts/tpu_compile_check.py` lower."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from flax.core import meta
  from trainer import gin_flags
  from trainer.model.config import EncoderDecoderConfig
  from trainer.training import benchmark as bench
  from trainer.training import loop as trainer
  from trainer.training import models
  from trainer.training import optimizers
  from trainer.training.train_state import TrainState
  config = gin_flags.config_from_gin([gin_file], list(bindings))
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
  return step, state, abstract_batch


def compile_part(gin_file: str, bindings, *, batch_size: int, length: int,
                 encoder_length: int, variants=COMPILE_VARIANTS) -> list:
  """Per variant: seconds to lower + compile the train step (adafactor, donated state), XLA's
  `memory_analysis()` of the compiled step, and the train state's bytes (params + optimiser
  state, from shapes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def nbytes(tree):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))

  gib = lambda n: f'{n / 2**30:.2f}'
  rows = []
  for label, extra, master_dtype in variants:
    try:
      step, state, abstract_batch = abstract_train_step(
          gin_file, list(bindings) + list(extra), batch_size=batch_size, length=length,
          encoder_length=encoder_length, master_dtype=master_dtype)
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
