r"""Inference speed, printed side by side (a benchmark script, not a test):

  python scripts/infer_bench.py [--vocab_size=32000] [--prompt=128] [--new=128] [--batches=1,16]
                                [--gin_dir=gin/models] [--skip_hf] [--dtype=float32]
                                [--skip_uncached] [--uncached_steps=8] [--skip_axis]

1. Ours vs transformers `generate` on the same model (gemma2_small shapes, random weights, exported
   with `hf_gemma2.export_decoder`; greedy, `--prompt`-token prompts, `--new` new tokens, no early
   EOS on either side): generated tokens/s and time to first token (prefill + 1 token), torch using
   as many threads as XLA's CPU client sees (all cores).
2. Ours cached vs the uncached path the trainer had before (the whole prefix re-run for every new
   token, jitted at a fixed length): tokens/s at `--new` new tokens. Every uncached token costs
   the same (one forward over prompt + new positions), so `--uncached_steps=8` times only its
   first 8 tokens: the batch-16 row then takes a minute instead of over nine.
3. Decoder-only vs encoder-decoder with the same decoder (gemma2_small vs t5gemma_small), same
   prompt / output lengths: time to first token, decode tokens/s, K/V cache bytes.

Every figure is the best of `--repeats` timed runs after one compile run.
"""
import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax.core import meta  # pylint: disable=g-import-not-at-top

from trainer import gin_flags  # pylint: disable=g-import-not-at-top
from trainer.inference import decoding  # pylint: disable=g-import-not-at-top
from trainer.model import kv_cache  # pylint: disable=g-import-not-at-top
from trainer.model.config import EncoderDecoderConfig  # pylint: disable=g-import-not-at-top
from trainer.model.transformer import Decoder, EncoderDecoder  # pylint: disable=g-import-not-at-top


def _best(fn, repeats):
  fn()  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def _params(module, *args):
  params = meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), *args))['params']
  rng = np.random.RandomState(0)
  # Random norms too, so no layer is an identity; small enough that logits stay finite.
  return jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.02 * rng.randn(*x.shape).astype(
      np.float32), params)


def _ours(config, params, prompt, new, repeats):
  kw = dict(config=config, params=params, prompt_tokens=prompt, eos_id=-1)
  ttft = _best(lambda: decoding.generate(max_decode_length=1, **kw), repeats)
  total = _best(lambda: decoding.generate(max_decode_length=new, **kw), repeats)
  return ttft, total


def _uncached(config, params, prompt, new, repeats, steps=None):
  """The trainer's old path: every token re-runs the whole (fixed-length) sequence.

  Each token costs the same (one forward over `prompt + new` positions), so timing only the first
  `steps` tokens (default all `new`) gives the same tokens/s; -> seconds per token."""
  module = Decoder(config)
  batch, length = prompt.shape
  steps = new if steps is None else min(steps, new)
  fwd = jax.jit(lambda p, t, pos: jnp.argmax(
      jnp.take_along_axis(module.apply({'params': p}, t), pos[:, None, None], 1)[:, 0], -1))
  tokens = np.zeros((batch, length + new), np.int32)
  tokens[:, :length] = prompt
  np.asarray(fwd(params, tokens, np.full(batch, length - 1, np.int32)))  # compile

  def run():
    for k in range(steps):
      pos = np.full(batch, length - 1 + k, np.int32)
      tokens[:, length + k] = np.asarray(fwd(params, tokens, pos))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return min(times) / steps


def _hf(path, prompt, new, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  model = transformers.Gemma2ForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                         attn_implementation='eager').eval()
  model.generation_config.eos_token_id = None
  ids = torch.tensor(prompt, dtype=torch.long)
  mask = torch.ones_like(ids)

  def gen(n):
    with torch.no_grad():
      model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                     do_sample=False, num_beams=1, pad_token_id=0)
  return _best(lambda: gen(1), repeats), _best(lambda: gen(new), repeats)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--vocab_size', type=int, default=32000)
  ap.add_argument('--prompt', type=int, default=128)
  ap.add_argument('--new', type=int, default=128)
  ap.add_argument('--batches', default='1,16')
  ap.add_argument('--repeats', type=int, default=2)
  ap.add_argument('--decoder_gin', default='gin/models/gemma2_small.gin')
  ap.add_argument('--encdec_gin', default='gin/models/t5gemma_small.gin')
  ap.add_argument('--dtype', default='float32')
  ap.add_argument('--skip_hf', action='store_true')
  ap.add_argument('--skip_uncached', action='store_true')
  ap.add_argument('--uncached_steps', type=int, default=None,
                  help='time only the first N uncached tokens (each costs the same); default all')
  ap.add_argument('--skip_axis', action='store_true', help='skip table 3')
  args = ap.parse_args()
  bindings = [f'VOCAB_SIZE = {args.vocab_size}', f"ACTIVATION_DTYPE = '{args.dtype}'"]
  dec_cfg = gin_flags.config_from_gin([os.path.join(REPO, args.decoder_gin)], bindings)
  ed_cfg = gin_flags.config_from_gin([os.path.join(REPO, args.encdec_gin)], bindings)
  assert isinstance(ed_cfg, EncoderDecoderConfig)
  dec_params = _params(Decoder(dec_cfg), jnp.ones((1, 8), jnp.int32))
  ed_params = _params(EncoderDecoder(ed_cfg), jnp.ones((1, 8), jnp.int32),
                      jnp.ones((1, 8), jnp.int32))
  rng = np.random.RandomState(1)
  p, n = args.prompt, args.new
  print(f'# Inference benchmark: {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{os.cpu_count()} CPU cores, {args.dtype}, vocab {args.vocab_size}, prompt {p}, '
        f'{n} new tokens, greedy')
  hf_path = None
  if not args.skip_hf:
    from trainer.checkpoint import hf_gemma2  # pylint: disable=g-import-not-at-top
    hf_path = tempfile.mkdtemp(prefix='infer_bench_')
    hf_gemma2.export_decoder(dec_params, dec_cfg, hf_path)

  print('\n## 1. Ours (KV cache, jitted) vs transformers generate, '
        f'{os.path.basename(args.decoder_gin)}')
  print('| batch | ours tok/s | HF tok/s | ours / HF | ours TTFT s | HF TTFT s |')
  print('|---|---|---|---|---|---|')
  for batch in [int(b) for b in args.batches.split(',')]:
    prompt = rng.randint(3, args.vocab_size, size=(batch, p)).astype(np.int32)
    ttft, total = _ours(dec_cfg, dec_params, prompt, n, args.repeats)
    ours = batch * n / total
    if hf_path:
      hf_ttft, hf_total = _hf(hf_path, prompt, n, args.repeats)
      hf = batch * n / hf_total
      print(f'| {batch} | {ours:.1f} | {hf:.1f} | {ours / hf:.2f}x | {ttft:.3f} | {hf_ttft:.3f} |',
            flush=True)
    else:
      print(f'| {batch} | {ours:.1f} | - | - | {ttft:.3f} | - |', flush=True)

  if not args.skip_uncached:
    timed = n if args.uncached_steps is None else min(args.uncached_steps, n)
    print(f'\n## 2. Cached vs uncached (whole prefix re-run per token), {n} new tokens; uncached '
          f'timed over its first {timed} tokens (each re-runs all {p + n} positions)')
    print('| batch | cached tok/s | uncached tok/s | speed-up |')
    print('|---|---|---|---|')
    for batch in [int(b) for b in args.batches.split(',')]:
      prompt = rng.randint(3, args.vocab_size, size=(batch, p)).astype(np.int32)
      _, total = _ours(dec_cfg, dec_params, prompt, n, args.repeats)
      per_token = _uncached(dec_cfg, dec_params, prompt, n, 1, args.uncached_steps)
      cached, uncached = batch * n / total, batch / per_token
      print(f'| {batch} | {cached:.1f} | {uncached:.1f} | {cached / uncached:.1f}x |', flush=True)

  if args.skip_axis:
    return
  print(f'\n## 3. Decoder-only vs encoder-decoder, same decoder; prompt {p}, {n} new tokens')
  print('| model | batch | TTFT s | decode tok/s | K/V cache MiB |')
  print('|---|---|---|---|---|')
  for batch in [int(b) for b in args.batches.split(',')]:
    prompt = rng.randint(3, args.vocab_size, size=(batch, p)).astype(np.int32)
    for name, cfg, params in ((os.path.basename(args.decoder_gin), dec_cfg, dec_params),
                              (os.path.basename(args.encdec_gin), ed_cfg, ed_params)):
      ttft, total = _ours(cfg, params, prompt, n, args.repeats)
      decode = batch * (n - 1) / max(total - ttft, 1e-9)
      encdec = isinstance(cfg, EncoderDecoderConfig)
      mib = kv_cache.cache_bytes(cfg, batch=batch, max_length=(1 if encdec else p) + n,
                                 encoder_length=p) / 2**20
      print(f'| {name} | {batch} | {ttft:.3f} | {decode:.1f} | {mib:.2f} |', flush=True)


if __name__ == '__main__':
  main()
