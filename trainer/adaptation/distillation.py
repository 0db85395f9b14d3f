"""Online distillation from a frozen decoder-only teacher into an encoder-decoder student (PrefixLM).

T5Gemma (arXiv 2504.06225) distils the decoder-only source model into the adapted encoder-decoder
while training on the PrefixLM objective: the student reads the prefix with its encoder and predicts
the target with its decoder; the teacher reads prefix + target as one causal sequence. The loss on
target positions mixes token cross-entropy with KL(teacher || student) at a temperature:

  loss = (1 - w) * CE(student, targets) + w * T^2 * KL(softmax(t / T) || softmax(s / T)) + z_loss

(T^2 keeps the KL gradient scale independent of T, Hinton et al. 2015). With `w = 0` this is the
plain cross-entropy (with z-loss) of `trainer.training.losses.cross_entropy_with_z_loss`.

Teacher inputs are built from the student's encoder-decoder features (seqio `EncDecFeatureConverter`
output, packed or not) by `teacher_features`; see its docstring for the feature dicts.
"""
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from trainer.training import losses

SumCount = Tuple[jax.Array, jax.Array]


def check_distillation_args(*, distill_weight: float, temperature: float) -> None:
  """Validates the gin-facing hyper-parameters (errors name the binding)."""
  if isinstance(distill_weight, bool) or not isinstance(distill_weight, (int, float)) or not (
      0.0 <= distill_weight <= 1.0):
    raise ValueError(f'DISTILL_WEIGHT (distill_weight) must be a number in [0, 1], got {distill_weight!r}')
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
    raise ValueError(f'DISTILL_TEMPERATURE (temperature) must be a number > 0, got {temperature!r}')


def kl_divergence(teacher_logits: jax.Array, student_logits: jax.Array, *,
                  temperature: float = 1.0) -> jax.Array:
  """Per-token KL(softmax(teacher / T) || softmax(student / T)) over the last axis, in fp32.

  Args:
    teacher_logits: `[..., V]`.
    student_logits: `[..., V]` (same shape).
    temperature: T > 0.

  Returns:
    `[...]` fp32, >= 0 up to rounding, exactly 0 where the two logit vectors are equal.
  """
  t = teacher_logits.astype(jnp.float32) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  log_p = jax.nn.log_softmax(t, axis=-1)
  log_q = jax.nn.log_softmax(s, axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array,
                      weights: jax.Array, *, distill_weight: float, temperature: float,
                      z_loss: float = 0.0) -> Dict[str, SumCount]:
  """Mixed CE + KL loss on target positions, as `(sum, count)` metrics like `trainer.training.losses`.

  Args:
    student_logits: `[B, L, V]` student logits at the target positions.
    teacher_logits: `[B, L, V]` teacher logits aligned to the same targets (`gather_teacher_logits`).
      Gradients do not flow into the teacher (`stop_gradient` here).
    targets: `[B, L]` target ids; weights: `[B, L]` loss weights (0 on padding).
    distill_weight: w in [0, 1]; temperature: T > 0; z_loss: z-loss coefficient (not mixed).

  Returns:
    `cross_entropy_with_z_loss`'s metrics with `loss` replaced by the mixed loss, plus `kl`
    (the un-scaled KL at temperature T) and `distill` (`w * T^2 * kl`).
  """
  check_distillation_args(distill_weight=distill_weight, temperature=temperature)
  metrics = losses.cross_entropy_with_z_loss(student_logits, targets, weights, z_loss=z_loss)
  weights = weights.astype(jnp.float32)
  kl = kl_divergence(jax.lax.stop_gradient(teacher_logits), student_logits, temperature=temperature)
  kl_sum = jnp.sum(kl * weights)
  ce_sum, count = metrics['cross_entropy']
  zl_sum, _ = metrics['z_loss']
  distill_sum = distill_weight * temperature**2 * kl_sum
  metrics['kl'] = (kl_sum, count)
  metrics['distill'] = (distill_sum, count)
  metrics['loss'] = ((1.0 - distill_weight) * ce_sum + distill_sum + zl_sum, count)
  return metrics


def teacher_features(batch: Dict[str, jax.Array], *, start_token: int = 0) -> Dict[str, jax.Array]:
  """Builds the teacher's causal sequence (prefix followed by target) from enc-dec features.

  Works on unpacked and packed batches. In each segment k the teacher sequence is
  `encoder segment k` followed by `decoder targets of segment k`, shifted right by one with
  `start_token` first (seqio's decoder-only / PrefixLM convention: input 0 at each segment start),
  so the teacher logit at the slot of target token j predicts exactly that token.

  Before (student features, one unpacked row; 0 is padding):
    encoder_input_tokens  = [ 7,  8,  1,  0]
    decoder_target_tokens = [ 5,  6,  1,  0,  0]
  After:
    tokens        = [ 0,  7,  8,  1,  5,  6,  0,  0,  0]   (decoder inputs for the teacher)
    targets       = [ 7,  8,  1,  5,  6,  1,  0,  0,  0]
    segment_ids   = [ 1,  1,  1,  1,  1,  1,  0,  0,  0]
    positions     = [ 0,  1,  2,  3,  4,  5,  0,  0,  0]
    target_index  = [ 3,  4,  5, ...]   (teacher slot of each decoder target; padding slots too)
  Packed rows (with `encoder_segment_ids`, `decoder_segment_ids`, `encoder_positions`,
  `decoder_positions`) give `enc seg 1, dec seg 1, enc seg 2, dec seg 2, ...` with per-segment
  positions restarting at 0 and segment ids preserved.

  Args:
    batch: `encoder_input_tokens [B, Le]`, `decoder_target_tokens [B, Ld]`, and for packed batches
      the segment ids and positions of both sides.
    start_token: the input id at the start of each teacher segment.

  Returns:
    `tokens`, `targets`, `segment_ids`, `positions` (all `[B, Le + Ld]` int32) and
    `target_index` (`[B, Ld]` int32).
  """
  for key in ('encoder_input_tokens', 'decoder_target_tokens'):
    if key not in batch:
      raise ValueError(f'distillation needs encoder-decoder features; the batch has no {key!r} '
                       f'(keys: {sorted(batch)})')
  enc = batch['encoder_input_tokens'].astype(jnp.int32)
  dec = batch['decoder_target_tokens'].astype(jnp.int32)
  b, le = enc.shape
  ld = dec.shape[1]
  total = le + ld
  packed = 'encoder_segment_ids' in batch or 'decoder_segment_ids' in batch
  if packed:
    for key in ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions', 'decoder_positions'):
      if key not in batch:
        raise ValueError(f'packed distillation batch lacks {key!r} (keys: {sorted(batch)})')
    enc_seg = batch['encoder_segment_ids'].astype(jnp.int32)
    dec_seg = batch['decoder_segment_ids'].astype(jnp.int32)
    enc_pos = batch['encoder_positions'].astype(jnp.int32)
    dec_pos = batch['decoder_positions'].astype(jnp.int32)
  else:
    enc_seg = (enc != 0).astype(jnp.int32)
    dec_seg = (dec != 0).astype(jnp.int32)
    enc_pos = jnp.broadcast_to(jnp.arange(le, dtype=jnp.int32), (b, le))
    dec_pos = jnp.broadcast_to(jnp.arange(ld, dtype=jnp.int32), (b, ld))
  # Length of the prefix of each decoder token's segment: its target positions start there.
  prefix_len = jnp.sum((dec_seg[:, :, None] == enc_seg[:, None, :]) & (dec_seg[:, :, None] > 0),
                       axis=-1).astype(jnp.int32)
  tokens = jnp.concatenate([enc, dec], axis=1)
  segs = jnp.concatenate([enc_seg, dec_seg], axis=1)
  pos = jnp.concatenate([enc_pos, jnp.where(dec_seg > 0, prefix_len + dec_pos, 0)], axis=1)
  side = jnp.concatenate([jnp.zeros((b, le), jnp.int32), jnp.ones((b, ld), jnp.int32)], axis=1)
  # Sort key: segment (padding last), then prefix before target, then position in the segment.
  seg_key = jnp.where(segs > 0, segs, total + 1)
  key = (seg_key * 2 + side) * total + jnp.where(segs > 0, pos, 0)
  perm = jnp.argsort(key, axis=1, stable=True)
  take = lambda x: jnp.take_along_axis(x, perm, axis=1)
  t_targets = take(jnp.where(segs > 0, tokens, 0))
  t_segs = take(segs)
  t_pos = take(jnp.where(segs > 0, pos, 0))
  prev_tokens = jnp.pad(t_targets[:, :-1], ((0, 0), (1, 0)))
  prev_segs = jnp.pad(t_segs[:, :-1], ((0, 0), (1, 0)))
  t_inputs = jnp.where((prev_segs == t_segs) & (t_segs > 0), prev_tokens, start_token)
  t_inputs = jnp.where(t_segs > 0, t_inputs, 0)
  slot = jnp.argsort(perm, axis=1)  # inverse permutation: slot of each original token
  return {
      'tokens': t_inputs.astype(jnp.int32),
      'targets': t_targets.astype(jnp.int32),
      'segment_ids': t_segs.astype(jnp.int32),
      'positions': t_pos.astype(jnp.int32),
      'target_index': slot[:, le:].astype(jnp.int32),
  }


def gather_teacher_logits(teacher_logits: jax.Array, target_index: jax.Array) -> jax.Array:
  """`[B, Le + Ld, V]` teacher logits -> `[B, Ld, V]` aligned with the decoder targets."""
  return jnp.take_along_axis(teacher_logits, target_index[:, :, None], axis=1)


# --------------------------------------------------------------------------------------------------
# Model wrapper.

TEACHER_KEY = 'teacher'


class DistillationModel:
  """Encoder-decoder student + frozen decoder-only teacher, for `trainer.training.loop.train`.

  The parameter tree is the student's `{'encoder', 'decoder'}` plus `'teacher'` (a `Decoder` tree
  with the same logical axis names, so the partitioner shards the teacher exactly like the student).
  The teacher's values come from the init checkpoint (`adapt.adapted_checkpoint(teacher=...)`
  writes `{'encoder', 'decoder', 'teacher'}`); gradients never reach it (`stop_gradient`), and
  `trainer.training.freezing.freeze_teacher` gives it exact zero updates and no optimizer state, so it stays
  bit-identical through training and resumption.

  Feature dicts: the student's (seqio `EncDecFeatureConverter`, packed or not); the teacher's causal
  sequence is built from them by `teacher_features`.

  Args:
    config: the student's `EncoderDecoderConfig`.
    distill_weight, temperature: the loss mix (`distillation_loss`); gin DISTILL_WEIGHT and
      DISTILL_TEMPERATURE.
    teacher_side: which source the teacher is: 'decoder' (the decoder-only checkpoint the decoder was
      adapted from, config `config.decoder`) or 'encoder' (`config.encoder`, e.g. the 9B of a 9B-2B).
    teacher_config: explicit teacher `TransformerConfig` (overrides `teacher_side`).
    teacher_start_token: the teacher's input id at the start of each sequence (seqio: 0).
    z_loss: z-loss coefficient on the student's logits.
  """
  FEATURE_CONVERTER_NAME = 'EncDecFeatureConverter'

  def __init__(self, *, config, distill_weight: float = 0.5, temperature: float = 1.0,
               teacher_side: str = 'decoder', teacher_config=None, teacher_start_token: int = 0,
               z_loss: float = 0.0):
    from trainer.training import models  # pylint: disable=g-import-not-at-top
    from trainer.model import transformer  # pylint: disable=g-import-not-at-top
    check_distillation_args(distill_weight=distill_weight, temperature=temperature)
    if teacher_side not in ('decoder', 'encoder'):
      raise ValueError(f"DistillationModel.teacher_side must be 'decoder' or 'encoder', got {teacher_side!r}")
    self.student = models.EncoderDecoderModel(config=config, z_loss=z_loss)
    self.config = config
    self.module = self.student.module
    self.z_loss = z_loss
    self.distill_weight = float(distill_weight)
    self.temperature = float(temperature)
    self.teacher_config = teacher_config if teacher_config is not None else getattr(config, teacher_side)
    if self.teacher_config.vocab_size != config.decoder.vocab_size:
      raise ValueError(f'DistillationModel: teacher vocab_size={self.teacher_config.vocab_size} != '
                       f'student decoder vocab_size={config.decoder.vocab_size}')
    self.teacher_start_token = int(teacher_start_token)
    self.teacher = transformer.Decoder(self.teacher_config)

  def feature_converter_kwargs(self, pack: bool) -> Dict[str, Any]:
    return self.student.feature_converter_kwargs(pack)

  @staticmethod
  def split(params) -> Tuple[Any, Any]:
    """(student params `{'encoder', 'decoder'}`, teacher params)."""
    if TEACHER_KEY not in params:
      raise ValueError(f'distillation params have no {TEACHER_KEY!r} subtree (keys: {sorted(params)}); '
                       'start from a checkpoint written by adapt.adapted_checkpoint(teacher=...)')
    student = {k: v for k, v in params.items() if k != TEACHER_KEY}
    return student, params[TEACHER_KEY]

  def init(self, rng: jax.Array, batch: Dict[str, jax.Array]):
    student_rng, teacher_rng = jax.random.split(rng)
    params = dict(self.student.init(student_rng, batch))
    feats = teacher_features(batch, start_token=self.teacher_start_token)
    params[TEACHER_KEY] = self.teacher.init(
        teacher_rng, feats['tokens'], positions=feats['positions'],
        segment_ids=feats['segment_ids'])['params']
    return params

  def teacher_logits(self, teacher_params, batch: Dict[str, jax.Array]) -> jax.Array:
    """Teacher logits aligned with `decoder_target_tokens`: `[B, Ld, V]` fp32 (no gradient).

    The teacher's hidden states are gathered at the target slots *before* the vocabulary projection,
    so only `[B, Ld, V]` logits are materialised, not `[B, Le + Ld, V]`.
    """
    from trainer.model.reference_attention import AttentionMask  # pylint: disable=g-import-not-at-top
    feats = teacher_features(batch, start_token=self.teacher_start_token)
    index = feats['target_index']

    def run(module):
      mask = AttentionMask(q_segment_ids=feats['segment_ids'], kv_segment_ids=feats['segment_ids'],
                           causal=True)
      hidden = module.hidden(feats['tokens'], feats['positions'], mask, None, None, True)
      hidden = jnp.take_along_axis(hidden, index[:, :, None], axis=1)
      return module.logits(hidden)

    logits = self.teacher.apply({'params': jax.lax.stop_gradient(teacher_params)}, method=run)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))

  def loss_fn(self, params, batch: Dict[str, jax.Array], dropout_rng: Optional[jax.Array]):
    student, teacher = self.split(params)
    logits = self.student.compute_logits(student, batch, dropout_rng)
    metrics = distillation_loss(logits, self.teacher_logits(teacher, batch),
                                batch['decoder_target_tokens'], batch['decoder_loss_weights'],
                                distill_weight=self.distill_weight, temperature=self.temperature,
                                z_loss=self.z_loss)
    return losses.mean_loss(metrics), metrics

  def eval_fn(self, params, batch: Dict[str, jax.Array]):
    return self.loss_fn(params, batch, None)[1]

  def num_params(self, params: Any) -> int:
    """Trainable (student) parameters only."""
    return self.student.num_params(self.split(params)[0])

  def tokens_per_example(self, batch_shapes) -> int:
    return self.student.tokens_per_example(batch_shapes)

  def training_flops_per_example(self, batch_shapes) -> float:
    """Student training FLOPs + the teacher's forward pass over prefix + target (1/3 of training)."""
    from trainer.training import flops as flops_lib  # pylint: disable=g-import-not-at-top
    length = int(batch_shapes['encoder_input_tokens'][-1] + batch_shapes['decoder_target_tokens'][-1])
    return (self.student.training_flops_per_example(batch_shapes)
            + flops_lib.decoder_only_training_flops(self.teacher_config, length) / 3.0)
