r"""Compile-only check of the TPU fused-attention train step, on any machine (no TPU needed).

From abstract arrays (nothing is allocated), for one model/shape (default: T5Gemma 2B-2B, encoder
and decoder 2048 tokens, batch 2, adafactor, as `scripts/gpu_perf.py --part=compile`):

  1. `attention_impl='fused'` with the Mosaic TPU splash kernel: the whole train step (forward +
     backward) is *lowered for the TPU platform* (`lowering_platforms=('tpu',)`); the table shows
     the lowering time and how many Mosaic kernels (`tpu_custom_call`) the step holds. Compiling
     it needs a TPU, so no memory figures here.
  2. The same step compiled on this backend twice: the reference attention, and the splash
     kernel in Pallas interpret mode (the kernel's blocked algorithm as XLA loops). XLA's
     `memory_analysis()` of each, side by side: what the reference's `[B, H, L, S]` logits cost
     against the blocked kernel's tiles. These are this backend's figures, not a TPU's.

  python scripts/tpu_compile_check.py                                # T5Gemma 2B-2B 2048/2048
  python scripts/tpu_compile_check.py --binding='SCAN_LAYERS = False'  # unrolled (slow to compile)
  python scripts/tpu_compile_check.py --gin_file=gin/models/gemma2_small.gin --length=512

Default bindings: `SCAN_LAYERS = True` (the recommended TPU setting; one layer body to compile).
"""
import argparse
import contextlib
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpu_perf_parts


def _abstract_step(gin_file, bindings, *, batch_size, length, encoder_length):
  """(jitted train step, abstract state, abstract batch) as gpu_perf's compile part builds them."""
  from gpu_perf_parts import abstract_train_step  # pylint: disable=g-import-not-at-top
  return abstract_train_step(gin_file, bindings, batch_size=batch_size, length=length,
                             encoder_length=encoder_length)


def run(gin_file, bindings, *, batch_size, length, encoder_length):
  """-> rows (variant, seconds, Mosaic kernels, XLA temp GiB, XLA arguments GiB, note)."""
  import jax  # pylint: disable=g-import-not-at-top
  from trainer.model import tpu_attention  # pylint: disable=g-import-not-at-top
  fused = ["config.TransformerConfig.attention_impl = 'fused'"]
  gib = lambda n: f'{n / 2**30:.2f}'
  shape = dict(batch_size=batch_size, length=length, encoder_length=encoder_length)
  rows = []

  def row(label, fn):
    try:
      rows.append((label, *fn()))
    except Exception as e:  # pylint: disable=broad-except  (one failed variant is a row)
      rows.append((label, '-', '-', '-', '-', f'{type(e).__name__}: {str(e).splitlines()[0][:160]}'))
    print(f'# done: {rows[-1]}', flush=True)

  def lower_for_tpu():
    with tpu_attention.force_kernel(interpret=False):
      step, state, batch = _abstract_step(gin_file, list(bindings) + fused, **shape)
      t0 = time.perf_counter()
      text = step.trace(state, batch).lower(lowering_platforms=('tpu',)).as_text()
    kernels = text.count('tpu_custom_call')
    if not kernels:
      raise RuntimeError('the lowered step holds no Mosaic kernel (the fused path fell back)')
    return f'{time.perf_counter() - t0:.1f}', str(kernels), '-', '-', 'lowered for TPU'

  def compiled(extra, interpret):
    def fn():
      with (tpu_attention.force_kernel(interpret=True) if interpret
            else contextlib.nullcontext()):
        step, state, batch = _abstract_step(gin_file, list(bindings) + extra, **shape)
        t0 = time.perf_counter()
        exe = step.lower(state, batch).compile()
      mem = exe.memory_analysis()
      return (f'{time.perf_counter() - t0:.1f}', '0', gib(mem.temp_size_in_bytes),
              gib(mem.argument_size_in_bytes), f'compiled on {jax.default_backend()}')
    return fn

  row('fused: splash Mosaic TPU kernel', lower_for_tpu)
  row('reference attention', compiled([], interpret=False))
  row('fused: splash kernel, interpret mode', compiled(fused, interpret=True))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--gin_file', default='gin/models/t5gemma_2b_2b.gin')
  parser.add_argument('--binding', action='append', default=None,
                      help="gin binding (repeatable); default 'SCAN_LAYERS = True'")
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--length', type=int, default=2048)
  parser.add_argument('--encoder_length', type=int, default=2048)
  args = parser.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  bindings = args.binding if args.binding is not None else ['SCAN_LAYERS = True']
  rows = run(os.path.join(REPO_ROOT, args.gin_file), bindings, batch_size=args.batch,
             length=args.length, encoder_length=args.encoder_length)
  import jax  # pylint: disable=g-import-not-at-top
  print(f'\n## Train step, {args.gin_file} {bindings}, batch {args.batch}, length {args.length} '
        f'(encoder {args.encoder_length}), adafactor; backend {jax.default_backend()}\n')
  header = ('variant', 'lower/compile s', 'tpu_custom_call sites', 'XLA temp GiB', 'XLA arguments GiB',
            'note')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    print('| ' + ' | '.join(str(c) for c in r) + ' |')
  return 0 if all(r[1] != '-' for r in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
