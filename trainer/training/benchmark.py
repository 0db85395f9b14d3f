"""Step-time benchmark of the real train step on synthetic batches (`python -m trainer.bench`).

No TensorFlow, seqio or Beam is imported: random token batches in the model's packed layout go
through the train step (loss, gradients, optimiser update, sharding from the mesh rules).
"""
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from trainer.training import flops as flops_lib
from trainer.training import models as models_lib
from trainer.training import optimizers
from trainer.training import partitioning
from trainer.training import loop as trainer_lib
from trainer.training.train_state import TrainState


def synthetic_batch(model, *, batch_size: int, length: int, encoder_length: Optional[int],
                    vocab_size: int, seed: int):
  """Random packed-format batch with the model's features (one segment per row)."""
  rng = np.random.RandomState(seed)

  def tokens(n):
    return rng.randint(2, vocab_size, size=(batch_size, n)).astype(np.int32)

  def decoder_features(n):
    targets = tokens(n)
    return {'decoder_target_tokens': targets,
            'decoder_input_tokens': np.concatenate(
                [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1),
            'decoder_loss_weights': np.ones((batch_size, n), np.float32),
            'decoder_segment_ids': np.ones((batch_size, n), np.int32),
            'decoder_positions': np.broadcast_to(np.arange(n, dtype=np.int32), (batch_size, n))}

  batch = decoder_features(length)
  if isinstance(model, models_lib.EncoderDecoderModel):
    n = encoder_length or length
    batch.update({'encoder_input_tokens': tokens(n),
                  'encoder_segment_ids': np.ones((batch_size, n), np.int32),
                  'encoder_positions': np.broadcast_to(np.arange(n, dtype=np.int32),
                                                       (batch_size, n))})
  return batch


def benchmark(*, model: models_lib.ModelWrapper, steps: int = 5, batch_size: int = 8, length: int = 512,
              encoder_length: Optional[int] = None, micro_batches: int = 1,
              optimizer: str = 'adafactor', master_dtype: Optional[str] = None,
              mesh_data: int = -1, mesh_fsdp: int = 1,
              mesh_tensor: int = 1, peak_flops: Optional[float] = None, seed: int = 0,
              stream=None) -> dict:
  """Times `steps` train steps after one compile step; returns and prints the figures."""
  stream = stream or sys.stdout
  for name, value in (('steps', steps), ('batch_size', batch_size), ('length', length),
                      ('micro_batches', micro_batches)):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f'benchmark.{name} must be a positive int, got {value!r}')
  partitioner = partitioning.Partitioner(mesh_config=partitioning.MeshConfig(
      data=mesh_data, fsdp=mesh_fsdp, tensor=mesh_tensor))
  cfg = model.config.decoder if hasattr(model.config, 'decoder') else model.config
  batch = synthetic_batch(model, batch_size=batch_size, length=length,
                          encoder_length=encoder_length, vocab_size=cfg.vocab_size, seed=seed)
  shapes = {k: v.shape for k, v in batch.items()}
  tx = optimizers.create_optimizer(name=optimizer, learning_rate=1e-3, master_dtype=master_dtype)
  rng = jax.random.PRNGKey(seed)
  dummy = {k: v[:1] for k, v in batch.items()}
  boxed = jax.eval_shape(model.init, rng, dummy)
  shardings = partitioner.params_sharding(boxed)
  params = jax.jit(lambda r: meta.unbox(model.init(r, dummy)), out_shardings=shardings)(rng)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), partitioner.replicated()),
                     params=params, opt_state=jax.jit(tx.init)(params),
                     rng=jax.device_put(rng, partitioner.replicated()))
  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step_fn = trainer_lib.make_train_step(model, tx, micro_batches=micro_batches)
  with partitioner.activate():
    p_step = jax.jit(step_fn, in_shardings=(state_shardings, None),
                     out_shardings=(state_shardings, partitioner.replicated()),
                     donate_argnums=(0,))
    device_batch = partitioner.shard_batch(batch)
    t0 = time.perf_counter()
    state, metrics = p_step(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = p_step(state, device_batch)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
  step_time = elapsed / steps
  tokens = model.tokens_per_example(shapes) * batch_size
  flops_step = model.training_flops_per_example(shapes) * batch_size
  peak = peak_flops if peak_flops is not None else flops_lib.peak_flops_per_device()
  mfu = flops_lib.mfu(flops_per_step=flops_step, step_time_s=step_time,
                      num_devices=jax.device_count(), peak_flops=peak)
  loss = float(metrics['loss'][0] / np.maximum(metrics['loss'][1], 1))
  out = {'params': model.num_params(params), 'devices': jax.device_count(),
         'device_kind': jax.devices()[0].device_kind, 'mesh': dict(partitioner.mesh.shape),
         'batch_size': batch_size, 'shapes': {k: list(v) for k, v in shapes.items()},
         'compile_s': compile_s, 'step_time_s': step_time, 'tokens_per_s': tokens / step_time,
         'train_tflops_per_step': flops_step / 1e12, 'peak_flops_per_device': peak, 'mfu': mfu,
         'final_loss': loss}
  print(f"bench: {out['params']:,} params | {out['devices']} x {out['device_kind']} | mesh "
        f"{out['mesh']} | batch {batch_size} | compile {compile_s:.1f} s", file=stream)
  mfu_text = f'{100 * mfu:.1f}%' if mfu is not None else 'n/a (unknown peak; set peak_flops)'
  achieved = flops_step / step_time
  rate = f'{achieved / 1e12:.2f} TFLOP/s' if achieved >= 1e12 else f'{achieved / 1e9:.2f} GFLOP/s'
  print(f'bench: step time {step_time * 1e3:.1f} ms | {out["tokens_per_s"]:,.0f} tokens/s | '
        f'{rate} | MFU {mfu_text} | loss {loss:.3f}',
        file=stream, flush=True)
  return out
