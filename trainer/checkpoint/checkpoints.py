"""Orbax checkpoints: periodic, keep-last-N, asynchronous, and params-only restores (no TF, no gin).

Layout of a training run's checkpoints (an orbax `CheckpointManager` directory):

  MODEL_DIR/checkpoints/<step>/params/      parameters (sharded arrays, orbax PyTree format)
                              opt_state/   optimiser state
                              train_meta/  {'step': int array, 'rng': PRNG key data}
                              data/        JSON {'batches_consumed': n, ...} (the data position)

`params_dir(path)` finds the params of (a) such a manager directory (latest step), (b) one step
directory of it, or (c) a plain params checkpoint written by `save_params(path, params)` (what
`trainer.adapt` and HF imports write). `read_params` reads one as stored, from its own metadata;
`restore_orbax_params` into a model's abstract params, converting stacks saved unrolled into a
scanned model (`TransformerConfig.scan_layers`) and vice versa (`trainer.model.scan_layout`); a
full-state resume (`Checkpointer.restore`) needs the same layout. Any checkpoint path, Hugging Face
directories included: `trainer.checkpoint.loader`.

Damaged checkpoints (a truncated array file, an empty `_METADATA`) raise `CorruptCheckpointError`,
one line naming the step and the file; `Checkpointer.restore_newest_intact` (what a resume uses)
verifies the newest step by restoring it and falls back to the newest intact one, moving the
damaged steps aside to `<checkpoints>/../corrupt_checkpoints/<step>` (see `integrity`).

A step becomes a step only when orbax commits it (renames `<step>.orbax-checkpoint-tmp-*` to
`<step>`): a process killed during the write leaves a temporary directory that is never restored
and is removed when the next run starts. Tests stop a run at that point with GEMMA_ADAPT_FAULT
(`fault_injection`; inert unless set).
"""
import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from trainer.checkpoint import fault_injection
from trainer.checkpoint import integrity
from trainer.checkpoint.integrity import CorruptCheckpointError  # noqa: F401  (part of the API)
from trainer.model import scan_layout

ITEMS = ('params', 'opt_state', 'train_meta', 'data')


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often and how many.

  Attributes:
    period: save every `period` steps (0: only at the end / on a signal).
    keep: how many recent checkpoints to keep (None keeps all).
    async_save: write in a background thread while training continues.
    save_on_signal: on SIGTERM/SIGINT, finish the current step, save, then exit.
    fallback_on_corrupt: on resume, a damaged newest checkpoint is reported (step and file) and
      the run resumes from the newest intact one; False: stop with that one-line error instead.
  """
  period: int = 1000
  keep: Optional[int] = 3
  async_save: bool = True
  save_on_signal: bool = True
  fallback_on_corrupt: bool = True

  def __post_init__(self):
    if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 0:
      raise ValueError(f'CheckpointConfig.period must be an int >= 0, got {self.period!r}')
    if self.keep is not None and (not isinstance(self.keep, int) or self.keep < 1):
      raise ValueError(f'CheckpointConfig.keep must be a positive int or None, got {self.keep!r}')


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` for the trainer's four items."""

  def __init__(self, directory: str, cfg: CheckpointConfig = CheckpointConfig()):
    self.directory = os.path.abspath(directory)
    self.cfg = cfg
    self._unmanifested = set()
    self._saving = None  # the step being written (read by the fault-injection hook)
    fault_hook = fault_injection.during_save_hook(lambda: self._saving)
    if fault_hook is not None and not cfg.async_save:
      raise ValueError(f'{fault_injection.ENV} needs CheckpointConfig.async_save=True')
    self._fault_armed = fault_hook is not None
    # cleanup_tmp_directories: a step whose write was cut short (its process killed before the
    # commit) is never listed as a step; its temporary directory is removed on the next start.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, create=True, enable_async_checkpointing=cfg.async_save,
        cleanup_tmp_directories=True,
        async_options=(None if fault_hook is None
                       else ocp.AsyncOptions(post_finalization_callback=fault_hook)))
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def _write_manifests(self):
    """Size manifests (integrity.write_manifest) for the steps this process saved, once orbax has
    finalised them: called after each save (orbax's save first waits for the one before), on
    wait() and on close(). A step whose process dies first simply has none (nothing checked)."""
    if jax.process_index() != 0:
      return
    kept = set(self.manager.all_steps())  # (includes a step still being committed)
    self._unmanifested &= kept
    for step in sorted(self._unmanifested):
      if integrity.write_manifest(os.path.join(self.directory, str(step))):
        self._unmanifested.discard(step)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, *, params, opt_state, train_meta, data_state: Mapping[str, Any],
           force: bool = False) -> bool:
    if step in self.manager.all_steps():
      return False
    # orbax refuses empty trees (e.g. optax.set_to_zero's state): store a JSON marker instead.
    opt_args = (ocp.args.StandardSave(opt_state) if jax.tree_util.tree_leaves(opt_state)
                else ocp.args.JsonSave({'empty': True}))
    if self._fault_armed:  # the previous write is committed: the hook sees this save's step
      self.manager.wait_until_finished()
    self._saving = step
    saved = self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=opt_args,
        train_meta=ocp.args.StandardSave(train_meta),
        data=ocp.args.JsonSave(dict(data_state))), force=force)
    if saved:
      logging.info('checkpoint: saving step %d to %s', step, self.directory)
      self._unmanifested.add(step)
    self._write_manifests()
    return saved

  def restore(self, step: int, *, abstract_params, abstract_opt_state, abstract_train_meta):
    """(params, opt_state, train_meta, data_state) of `step`; CorruptCheckpointError if damaged."""
    step_dir = os.path.join(self.directory, str(step))
    integrity.check(step_dir, step=step)
    empty_opt = not jax.tree_util.tree_leaves(abstract_opt_state)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          opt_state=(ocp.args.JsonRestore() if empty_opt
                     else ocp.args.StandardRestore(abstract_opt_state)),
          train_meta=ocp.args.StandardRestore(abstract_train_meta),
          data=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (tensorstore raises bare Exception)
      error = integrity.corrupt_error(e, step=step, directory=step_dir)
      if error is e:
        raise
      raise error from e
    opt_state = abstract_opt_state if empty_opt else out.opt_state
    data = dict(out.data or {})
    if 'batches_consumed' not in data:
      raise CorruptCheckpointError(f'checkpoint step {step}: {os.path.join(step_dir, "data")} '
                                   'holds no data position (batches_consumed)')
    return out.params, opt_state, out.train_meta, data

  def data_state(self, step: int) -> dict:
    """The data position saved at `step`: `{'batches_consumed': n, 'seed': s[, 'loader': ...]}`
    ({} when unreadable: the full restore says why)."""
    try:
      data = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
      return dict(data['data'])
    except Exception:  # pylint: disable=broad-except
      return {}

  def restore_newest_intact(self, *, abstract_params, abstract_opt_state, abstract_train_meta,
                            log: Callable[[str], None] = print):
    """(step, (params, opt_state, train_meta, data_state)) of the newest step that restores.

    Damaged newer steps are reported through `log` (step and file) and moved to
    `corrupt_checkpoints/` beside this directory (so a later save of that step is not skipped);
    with `cfg.fallback_on_corrupt=False`, or when no step restores, the newest step's
    CorruptCheckpointError is raised.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    first_error = None
    for step in steps:
      try:
        restored = self.restore(step, abstract_params=abstract_params,
                                abstract_opt_state=abstract_opt_state,
                                abstract_train_meta=abstract_train_meta)
      except CorruptCheckpointError as e:
        first_error = first_error or e
        if not self.cfg.fallback_on_corrupt:
          raise
        log(f'warning: {e}')
        continue
      if step != steps[0]:
        moved = integrity.move_aside(self.directory, [s for s in steps if s > step])
        log(f'warning: resuming from step {step}, the newest intact checkpoint (damaged steps '
            f'moved to {moved})')
        self.manager.reload()
      return step, restored
    raise first_error

  def wait(self):
    self.manager.wait_until_finished()
    self._write_manifests()

  def close(self):
    self.manager.wait_until_finished()
    self._write_manifests()
    self.manager.close()


def save_params(directory: str, params) -> None:
  """Writes a params-only checkpoint (plain orbax PyTree) that `restore_params` reads."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(directory), params)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    integrity.write_manifest(os.path.abspath(directory))


def params_dir(path: str) -> str:
  """The orbax params directory of a manager dir (latest step), a step dir or a params dir."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ValueError(f'init_checkpoint: {path!r} is not a directory')
  if os.path.isdir(os.path.join(path, 'params')):
    return os.path.join(path, 'params')
  steps = sorted(int(name) for name in os.listdir(path) if name.isdigit() and
                 os.path.isdir(os.path.join(path, name, 'params')))
  if steps:
    return os.path.join(path, str(steps[-1]), 'params')
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return params_dir(os.path.join(path, 'checkpoints'))
  return path


def stored_tree(directory: str):
  """A params checkpoint's own tree of array metadata (nested dicts), or None if unreadable."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(directory)
  except (ValueError, KeyError, FileNotFoundError):
    return None
  tree = getattr(metadata, 'item_metadata', metadata)
  return getattr(tree, 'tree', tree)


def read_params(path: str):
  """A params tree as stored (numpy arrays, read on one host device), from its own metadata.

  `path`: anything `params_dir` accepts. Raises ValueError when there is no readable checkpoint.
  """
  directory = params_dir(path)
  integrity.check(directory)
  tree = stored_tree(directory)
  if tree is None:
    raise ValueError(f'cannot read an orbax params checkpoint from {directory!r}: no readable '
                     'checkpoint metadata')
  cpu = jax.local_devices(backend='cpu')[0]
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(cpu)), tree)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(directory, abstract)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(f'cannot read an orbax params checkpoint from {directory!r}: {e}') from e
  except Exception as e:  # pylint: disable=broad-except  (tensorstore: a damaged array file)
    error = integrity.corrupt_error(e, directory=directory)
    if error is e:
      raise
    raise error from e
  return jax.tree_util.tree_map(np.asarray, restored)


def restore_orbax_params(path: str, abstract_params):
  """Orbax params into `abstract_params` (structure, dtypes, shardings), in either stack layout.

  Stacks saved unrolled restore into a scanned model and vice versa (`trainer.model.scan_layout`).
  """
  directory = params_dir(path)
  integrity.check(directory)
  stored = stored_tree(directory)
  target = abstract_params if stored is None else scan_layout.like(abstract_params, stored)
  if stored is not None:
    check_stored_shapes(directory, target, stored)
  if jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(abstract_params):
    return _restore_orbax(directory, abstract_params)
  # The checkpoint's stacks are in the other layout (unrolled vs scanned): restore them as
  # stored, convert, and place each leaf as the model wants.
  restored = scan_layout.like(_restore_orbax(directory, target), abstract_params)
  return jax.tree_util.tree_map(
      lambda want, x: x if want.sharding is None else jax.device_put(x, want.sharding),
      abstract_params, restored)


def check_stored_shapes(directory: str, target, stored) -> None:
  """ValueError naming the first tensor whose stored shape differs from the model's, before any
  array is read (a failed read leaves orbax's async reads to fail again at exit)."""
  def flat(tree):
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, 'shape') and not isinstance(x, Mapping))[0]
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves if hasattr(x, 'shape')}
  have, want = flat(stored), flat(target)
  for key in sorted(want.keys() & have.keys()):
    if have[key] != want[key]:
      hint = ' (VOCAB_SIZE?)' if 'embed' in key else ''
      raise ValueError(f'{directory}: tensor {key} has shape {have[key]} in the checkpoint, the '
                       f'model wants {want[key]}{hint}')


def _restore_orbax(params_dir: str, abstract_params):
  """Orbax restore of `abstract_params`' structure, whole or as a part of a bigger tree."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:  # closed: no async teardown noise on error
      return checkpointer.restore(params_dir, abstract_params)
  except (ValueError, KeyError, FileNotFoundError) as e:
    if integrity.is_damage(e):
      raise integrity.corrupt_error(e, directory=params_dir) from e
    error = e
  except Exception as e:  # pylint: disable=broad-except  (tensorstore: a damaged array file)
    damage = integrity.corrupt_error(e, directory=params_dir)
    if damage is e:
      raise
    raise damage from e
  # A checkpoint may hold more than this model: a distillation run keeps its frozen teacher in
  # params['teacher'] beside the student's 'encoder'/'decoder'. Restore just this model's entries;
  # anything the model has that the checkpoint lacks still fails (with the first error).
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
          item=abstract_params,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_params),
          partial_restore=True))
  except (ValueError, KeyError, FileNotFoundError):
    restored = None
  if (restored is None
      or jax.tree_util.tree_structure(restored) != jax.tree_util.tree_structure(abstract_params)
      or any(not hasattr(x, 'dtype') or isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree_util.tree_leaves(restored))):
    raise ValueError(f'init_checkpoint: cannot restore params from {params_dir!r} into this '
                     f'model: {error}') from error
  return restored


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with shardings when given) describing `tree`."""
  if shardings is None:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
        tree)
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
