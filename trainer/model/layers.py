"""Gemma 2 building blocks: RMSNorm, embedder, GeGLU MLP, RoPE, soft-capping.

Each computes what Hugging Face `Gemma2*` / `T5Gemma*` compute (checked by tests/test_hf_gemma2.py),
including where HF casts: RMSNorm in fp32, the sqrt(D) embedding normaliser in the compute dtype,
RoPE cos/sin computed in fp32 and cast to the activations' dtype.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import dropout as dropout_lib
from trainer.model import matmul
from trainer.model.config import TransformerConfig


def soft_cap(x: jax.Array, cap: Optional[float]) -> jax.Array:
  """`tanh(x / cap) * cap` (identity when cap is None)."""
  if cap is None:
    return x
  return jnp.tanh(x / cap) * cap


class RMSNorm(nn.Module):
  """RMSNorm with a zero-initialised scale `w` applied as `(1 + w)`; statistics in fp32.

  Output dtype = input dtype (HF: `(norm(x.float()) * (1 + w.float())).type_as(x)`).
  """
  eps: float = 1e-6
  param_dtype: jnp.dtype = jnp.float32
  axis_name: str = 'embed'  # logical axis of the scale ('head_dim' for Gemma 3's QK-norm)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,))
    scale = self.param('scale', init, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class Embedder(nn.Module):
  """Token embedding `[V, D]`, shared by the input (scaled by sqrt(D)) and the output projection.

  With `eoi_token_id` (T5Gemma 2) there is also 'eoi_embedding' `[D]` (zero-initialised): that
  token's input embedding is this vector, unscaled, instead of its scaled table row (HF
  `T5Gemma2TextScaledWordEmbedding`); the output projection still uses the table.
  """
  vocab_size: int
  embed_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  eoi_token_id: Optional[int] = None

  def setup(self):
    # stddev D**-0.5: scaled inputs have unit RMS and tied output logits start near unit scale.
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(stddev=self.embed_dim**-0.5),
                                     ('vocab', 'embed')),
        (self.vocab_size, self.embed_dim), self.param_dtype)
    if self.eoi_token_id is not None:
      self.eoi_embedding = self.param(
          'eoi_embedding', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('embed',)),
          (self.embed_dim,), self.param_dtype)

  def encode(self, tokens: jax.Array) -> jax.Array:
    """Token ids `[B, L]` -> `[B, L, D]` in the compute dtype, times sqrt(D) (cast to that dtype
    first, as HF does)."""
    x = jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)
    x = x * jnp.asarray(np.sqrt(self.embed_dim), self.dtype)
    if self.eoi_token_id is not None:
      x = jnp.where((tokens == self.eoi_token_id)[..., None], self.eoi_embedding.astype(self.dtype),
                    x)
    return x

  def attend(self, x: jax.Array) -> jax.Array:
    """Hidden `[B, L, D]` -> fp32 logits `[B, L, V]` (inputs in the compute dtype, accumulated in
    fp32; HF computes these in the model dtype)."""
    return matmul.contract_transposed(x.astype(self.dtype), self.embedding.astype(self.dtype),
                                      preferred_element_type=jnp.float32)


class Projection(nn.Module):
  """Bias-free projection: contracts the last `num_input_axes` axes of x with a kernel
  `[*input_shape, *features]` (e.g. q_proj [D, H, Dh], o_proj [H, Dh, D]).

  Not `nn.DenseGeneral`: its initialiser creates the kernel flat and reshapes it afterwards, so a
  logically partitioned kernel with more than two axes gets a rank-2 sharding constraint and fails
  under a mesh (`jax.set_mesh` + logical rules), at init and at apply (flax re-checks shapes).
  """
  features: Tuple[int, ...]
  axes: Tuple[str, ...]
  num_input_axes: int = 1
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in, n_out = self.num_input_axes, len(self.features)
    init = nn.initializers.variance_scaling(  # lecun_normal over the real fan-in / fan-out axes
        1.0, 'fan_in', 'truncated_normal', in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param('kernel', nn.with_logical_partitioning(init, self.axes),
                        tuple(x.shape[-n_in:]) + tuple(self.features), self.param_dtype)
    # A 2-D matmul on CPU (trainer.model.matmul: no transposed copies in the backward pass).
    return matmul.contract(x.astype(self.dtype), kernel.astype(self.dtype), num_input_axes=n_in)


class MLP(nn.Module):
  """GeGLU feed-forward: `down(gelu_tanh(gate(x)) * up(x))`, dropout before `down` (T5Gemma)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.config

    def dense(features, axes, name):
      return Projection(features=(features,), axes=axes, dtype=cfg.compute_dtype,
                        param_dtype=cfg.parameter_dtype, name=name)

    gate = dense(cfg.mlp_dim, ('embed', 'mlp'), 'gate_proj')(x)
    up = dense(cfg.mlp_dim, ('embed', 'mlp'), 'up_proj')(x)
    hidden = jax.nn.gelu(gate, approximate=True) * up
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = dropout_lib.Dropout(rate=cfg.dropout_rate)(hidden, deterministic=deterministic)
    return dense(cfg.embed_dim, ('mlp', 'embed'), 'down_proj')(hidden)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float, dtype,
                 scaling_factor: Optional[float] = None) -> tuple:
  """cos, sin `[B, L, head_dim]` for integer positions `[B, L]`.

  HF default RoPE: frequencies `theta ** (-2i / head_dim)`, duplicated across the two halves;
  computed in fp32, cast to dtype. `scaling_factor` (HF 'linear' RoPE): frequencies divided by it.
  """
  inv_freq = 1.0 / (theta**(np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  if scaling_factor is not None:
    inv_freq = (inv_freq / np.float32(scaling_factor)).astype(np.float32)
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def stack_ropes(positions: jax.Array, config: TransformerConfig) -> tuple:
  """The RoPE tables of a stack, indexed by `config.layer_rope_index(i)`: (global,) for Gemma 2,
  (global, local) when `config.has_local_rope` (Gemma 3)."""
  dtype = config.compute_dtype
  ropes = (rope_cos_sin(positions, config.head_dim, config.rope_theta, dtype,
                        config.rope_scaling_factor),)
  if config.has_local_rope:
    local_theta = (config.rope_theta if config.local_rope_theta is None
                   else config.local_rope_theta)
    ropes += (rope_cos_sin(positions, config.head_dim, local_theta, dtype),)
  return ropes


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half RoPE (HF convention) on `x [B, L, N, Dh]` with cos/sin `[B, L, Dh]`."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
