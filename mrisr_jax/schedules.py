"""Learning-rate schedules, counted in optimizer steps and configured in epochs."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def make_schedule(
  kind: str, base_lr: float, steps_per_epoch: int, every_epochs: int, factor: float = 0.5, warmup_epochs: float = 0.0
) -> optax.Schedule:
  """kind:
  - 'step': staircase, lr = base * factor ** floor(epoch / every) (the seed: halve every 30 epochs);
  - 'linear': the reference's LinearLR(start 1, end `factor`, total_iters=every) stepped per epoch:
    lr = base * (1 - (1 - factor) * min(epoch, every) / every), then constant;
  - 'constant'.
  `epoch` = floor(step / steps_per_epoch), so the rate changes at epoch boundaries as in PyTorch.

  warmup_epochs > 0: the first w = round(warmup_epochs * steps_per_epoch) steps (at least 1) ramp
  linearly, lr = base * (t + 1) / w for t < w (never 0: step 0 already moves); from step w on the
  schedule above runs unchanged (still counted from step 0, not shifted by the warm-up).
  """
  spe = max(int(steps_per_epoch), 1)
  schedule = _decay(kind, base_lr, spe, every_epochs, factor)
  if warmup_epochs <= 0:
    return schedule
  warmup = max(1, int(round(warmup_epochs * spe)))

  def warmed(step):
    ramp = base_lr * (jnp.asarray(step, jnp.float32) + 1.0) / warmup
    return jnp.where(step < warmup, ramp, schedule(step))

  return warmed


def _decay(kind: str, base_lr: float, spe: int, every_epochs: int, factor: float) -> optax.Schedule:
  if kind == 'constant':
    return optax.constant_schedule(base_lr)
  if kind == 'step':
    return optax.exponential_decay(base_lr, transition_steps=every_epochs * spe, decay_rate=factor, staircase=True)
  if kind == 'linear':

    def linear(step):
      epoch = jnp.minimum(jnp.floor_divide(step, spe), every_epochs)
      return base_lr * (1.0 - (1.0 - factor) * epoch / every_epochs)

    return linear
  raise ValueError(f'unknown schedule {kind!r}; known: constant, linear, step')
