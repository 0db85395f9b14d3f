"""Test-only fault injection into checkpoint writes: inert unless GEMMA_ADAPT_FAULT is set.

The reliability suite uses it to stop the real `python -m trainer.train` *while* orbax writes a
step, deterministically rather than by timing:

  GEMMA_ADAPT_FAULT=kill_during_save:4   SIGKILL this process while step 4 is being saved
  GEMMA_ADAPT_FAULT=term_during_save:4   SIGTERM it there (the trainer then saves and stops)

"While being saved" is orbax's last point before the commit: every item of the step has been
written to its temporary directory (`<step>.orbax-checkpoint-tmp-*`, no `commit_success.txt`)
and the rename to `<step>` has not happened. The hook is orbax's
`AsyncOptions.post_finalization_callback`, which the async checkpointer runs in its background
thread before that rename, so it needs `CheckpointConfig.async_save` (the default). With the
variable unset, `during_save_hook` returns None and nothing is installed.
"""
import os
import signal
import sys
from typing import Callable, Optional

ENV = 'GEMMA_ADAPT_FAULT'
_SIGNALS = {'kill_during_save': signal.SIGKILL, 'term_during_save': signal.SIGTERM}


def during_save_hook(current_step: Callable[[], Optional[int]]) -> Optional[Callable[[], None]]:
  """A callback for orbax's pre-commit point, or None when GEMMA_ADAPT_FAULT is unset.

  `current_step()` returns the step whose write is being committed. Raises ValueError on a value
  other than `kill_during_save:<step>` / `term_during_save:<step>`.
  """
  spec = os.environ.get(ENV, '')
  if not spec:
    return None
  action, _, step = spec.partition(':')
  if action not in _SIGNALS or not step.isdigit():
    raise ValueError(f'{ENV}={spec!r}: expected kill_during_save:<step> or '
                     'term_during_save:<step>')
  signum, step = _SIGNALS[action], int(step)

  def hook():
    if current_step() == step:
      print(f'{ENV}: {action} at step {step}', file=sys.stderr, flush=True)
      os.kill(os.getpid(), signum)

  return hook
