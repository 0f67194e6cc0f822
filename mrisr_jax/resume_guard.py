"""Resuming a workdir with another config: what may change, what may not, and where the stages lie.

Every checkpoint records the config it was trained with and its stage plan ([name, start, end] per
stage). Before anything is restored, `check` compares them with this run's config:
- refused, because the saved state would mean something else: the model and the discriminator
  (scale included), the stage list (names, order, kinds), every optimizer setting (learning rates,
  betas, schedules, warm-up, LR scaling, per-layer multipliers, EMA), a stage's DeepNorm alpha and
  dropout, the epochs of a stage that has finished, and fewer epochs of the current stage than it
  has trained;
- allowed, and logged: everything else (more epochs of the current or later stages, the cadence of
  logs, evaluations and checkpoints, the data, the loss weights, the batch size, the mesh, ...).
`--allow_config_change` turns the refusals into logged warnings.

`resume_plan` then places the stages on the step axis so that no saved step changes stage: the
finished stages and the current stage's start are the saved ones; the current stage's end and the
later stages follow from this config's epochs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from mrisr_jax.errors import UserError
from mrisr_jax.recipe import Stage

# top-level keys (and prefixes) whose change alters what the saved train state means
_STATE_KEYS = (
  'model.',
  'discriminator.',
  'stage_order',
  'lr_scaling',
  'base_batch_size',
  'lr_multipliers',
  'ema_decay',
)
# stage fields of the same kind: the optimizer (Adam, schedules) and the generator's form in the stage
_STAGE_STATE_FIELDS = frozenset(
  {
    'kind',
    'lr_g',
    'lr_d',
    'b1',
    'b2',
    'schedule',
    'schedule_epochs',
    'schedule_factor',
    'schedule_factor_d',
    'warmup_epochs',
    'deepnorm_alpha',
    'dropout',
  }
)
_SHOWN = 8  # differing keys named in the one-line error


class ResumeConfigError(UserError):
  """The workdir's checkpoint was trained with a config this run may not continue."""


@dataclasses.dataclass
class ConfigDiff:
  refused: list[str]  # 'KEY: OLD -> NEW (why)'
  allowed: list[str]


def flatten(config: dict, prefix: str = '') -> dict[str, Any]:
  """{'a.b': value} of a nested config dict (lists as tuples, so they compare by value)."""
  out = {}
  for k, v in config.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + '.'))
    else:
      out[key] = tuple(v) if isinstance(v, list) else v
  return out


def plan_meta(plan: Iterable[Stage]) -> list[list]:
  """The stage plan as a checkpoint records it."""
  return [[s.name, s.start, s.end] for s in plan]


def _current_stage(saved_plan: list[list], saved_stage: str | None, step: int) -> int:
  """Index of the stage the saved step belongs to: the checkpoint's own label, else the stage holding
  the last trained step."""
  names = [name for name, _, _ in saved_plan]
  if saved_stage in names:
    return names.index(saved_stage)
  for i, (_, start, end) in enumerate(saved_plan):
    if start <= max(step - 1, 0) < end:
      return i
  return len(saved_plan) - 1


def check(saved_config: dict, config: dict, saved_plan: list[list], saved_stage: str | None, step: int, spe: int):
  """The differences between the saved config and this run's, sorted into refused and allowed."""
  old, new = flatten(saved_config), flatten(config)
  current = _current_stage(saved_plan, saved_stage, step)
  saved_bounds = {name: (start, end) for name, start, end in saved_plan}
  stage_index = {name: i for i, (name, _, _) in enumerate(saved_plan)}
  diff = ConfigDiff([], [])
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, '<absent>'), new.get(key, '<absent>')
    if a == b:
      continue
    text = f'{key}: {a!r} -> {b!r}'
    parts = key.split('.')
    if key.startswith(_STATE_KEYS) or key in _STATE_KEYS:
      diff.refused.append(text)
    elif parts[0] == 'stages' and len(parts) == 3 and parts[1] in stage_index:
      name, field = parts[1], parts[2]
      i = stage_index[name]
      if field in _STAGE_STATE_FIELDS:
        diff.refused.append(text)
      elif field == 'epochs' and i < current:
        diff.refused.append(f'{text} (stage {name} finished at step {saved_bounds[name][1]})')
      elif field == 'epochs' and i == current and isinstance(b, int) and saved_bounds[name][0] + b * spe < step:
        diff.refused.append(f'{text} (stage {name} has already trained to step {step})')
      else:
        diff.allowed.append(text)
    elif parts[0] == 'stages' and len(parts) >= 2 and parts[1] not in stage_index:
      diff.refused.append(text)  # a stage added or removed
    else:
      diff.allowed.append(text)
  return diff


def refusal_message(workdir, step: int, refused: list[str]) -> str:
  shown = '; '.join(refused[:_SHOWN]) + (f'; and {len(refused) - _SHOWN} more' if len(refused) > _SHOWN else '')
  return (
    f'{workdir}: its checkpoint (step {step}) was trained with another config, and these differences change '
    f'what the saved state means: {shown}. Use the original config, a new --workdir, or --allow_config_change'
  )


def resume_plan(plan: list[Stage], saved_plan: list[list], saved_stage: str | None, step: int, spe: int) -> list[Stage]:
  """`plan` (this config's stages, same names in the same order as `saved_plan`) with the finished
  stages and the current stage's start taken from the checkpoint; the current stage ends after this
  config's epochs (not before the saved step) and the later stages follow it."""
  if [s.name for s in plan] != [name for name, _, _ in saved_plan]:
    return plan  # a changed stage list was allowed explicitly: this config's plan as it is
  current = _current_stage(saved_plan, saved_stage, step)
  out, start = [], 0
  for i, (stage, (_, saved_start, saved_end)) in enumerate(zip(plan, saved_plan)):
    if i < current:
      start, end = saved_start, saved_end
    elif i == current:
      start = saved_start
      end = max(start + stage.spec.epochs * spe, step)
    else:
      end = start + stage.spec.epochs * spe
    out.append(dataclasses.replace(stage, start=start, end=end))
    start = end
  return out
