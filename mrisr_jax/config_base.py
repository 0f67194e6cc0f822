"""The configuration schema and its shared defaults (configs are data: every knob of a run lives here).

The recipes are the config files in configs/ (one per system, `FILE:ARGS` parsed by `parse_args`):
each starts from `base_config` and `stage` here and overrides fields. Stages run in
`stage_order`; each stage is configured in epochs and counted in steps (steps = epochs *
steps_per_epoch, one epoch = one random crop of every training slice). A stage's generator loss is

  pixel_weight * pixel_loss(SR, HR) + perceptual_weight * sum_k w_k crit(vgg_k(SR), vgg_k(HR))
  + style_weight * sum_k w_k mse(gram_k(SR), gram_k(HR)) + adversarial_weight * loss.gan (G side)

with the VGG layers and their weights in `config.loss`; 'gan' stages also train the discriminator.
"""

from __future__ import annotations

import pathlib
import re

import ml_collections

from mrisr_jax.spec import RUN_DEFAULTS, DataSpec, LossConfig, StageSpec


def stage(**kw) -> ml_collections.ConfigDict:
  """A stage section: the defaults of spec.StageSpec (documented there) with `kw` over them."""
  s = StageSpec.defaults()
  unknown = set(kw) - set(s)
  if unknown:
    raise KeyError(f'unknown stage fields: {sorted(unknown)}')
  s.update(kw)
  return ml_collections.ConfigDict(s)


def base_config(name: str, model: dict, scale: int) -> ml_collections.ConfigDict:
  """Everything but the stages: data, loss definitions, mesh, logging."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.seed = RUN_DEFAULTS['seed']
  c.model = ml_collections.ConfigDict(dict(scale=scale, in_channels=1, out_channels=1, dtype='float32', **model))
  c.discriminator = ml_collections.ConfigDict(dict(name='casrgan_d'))

  # data fields and their defaults: spec.DataSpec (docs/data.md, docs/degradations.md)
  c.data = ml_collections.ConfigDict(dict(DataSpec.defaults(), hr_patch_size=96 if scale != 3 else 72))
  c.batch_size = RUN_DEFAULTS['batch_size']  # global, over all hosts and devices

  c.loss = ml_collections.ConfigDict(LossConfig.defaults())  # fields and defaults: spec.LossConfig
  # > 0: keep an exponential moving average of the generator (BasicSR's net_g_ema, e.g. 0.999);
  # validation, images and `export --what ema` then use it. 0 = off.
  c.ema_decay = RUN_DEFAULTS['ema_decay']
  # > 1: each step runs the global batch as this many micro-batches (rows j, j+k, ...) and sums their
  # gradients before one update: batch_size / k crops in memory at a time. Must divide batch_size; keep
  # the per-device batch a multiple of it so no rows move between devices.
  c.grad_accum_steps = RUN_DEFAULTS['grad_accum_steps']
  # Learning rates for another global batch: lr_g/lr_d are the rates at base_batch_size, times
  # batch_size / base_batch_size ('linear') or its square root ('sqrt'); 'none' = as written.
  c.lr_scaling = RUN_DEFAULTS['lr_scaling']
  c.base_batch_size = RUN_DEFAULTS['base_batch_size']  # the seed's batch
  c.lr_multipliers = ml_collections.ConfigDict()  # top-level generator param name -> lr factor
  c.stages = ml_collections.ConfigDict()
  c.stage_order = ()

  # Device mesh: batch over data x fsdp, kernels (and their Adam states) over fsdp; -1 = the remaining
  # devices. e.g. --config.mesh.fsdp=8 shards the kernels over each host's 8 GPUs (docs/scaling.md).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # ((regex on the '/'-joined parameter path, 'fsdp_last' | 'fsdp_largest' | 'replicated'), ...) tried
  # before sharding.DEFAULT_RULES (kernels' output channels over fsdp, the rest replicated).
  c.sharding_rules = ()

  c.log_every_steps = RUN_DEFAULTS['log_every_steps']
  c.image_every_steps = RUN_DEFAULTS['image_every_steps']
  c.eval_every_steps = RUN_DEFAULTS['eval_every_steps']
  c.checkpoint_every_steps = RUN_DEFAULTS['checkpoint_every_steps']
  c.stop_after_steps = RUN_DEFAULTS['stop_after_steps']  # > 0: save and exit at this step; rerun to resume
  # a step with non-finite gradients is skipped inside the jitted step; this many in a row stop the run
  c.max_consecutive_skipped_steps = RUN_DEFAULTS['max_consecutive_skipped_steps']
  # 'A:B': JAX profiler trace of steps A+1..B on process 0, in WORKDIR/profile
  c.profile_steps = RUN_DEFAULTS['profile_steps']
  c.keep_checkpoints = RUN_DEFAULTS['keep_checkpoints']  # latest N, plus the best by validation PSNR
  # > 0: stop after this many validations in a row that beat the best PSNR by no more than min_delta dB
  c.early_stop_patience = RUN_DEFAULTS['early_stop_patience']
  c.early_stop_min_delta = RUN_DEFAULTS['early_stop_min_delta']
  c.eval_batch_size = RUN_DEFAULTS['eval_batch_size']  # slices per validation step (global)
  return c


def parse_args(arg: str | None, path: str, schema: dict) -> dict:
  """`FILE:ARGS` as typed values, e.g. 'scale=2,quick' -> {'scale': 2, 'gan': False, 'quick': True}.

  schema: name -> False (a switch: `quick`, or `quick=false`) or name -> (default, choices) (a keyed
  value: `scale=2`, its type the default's). The older token forms stay: `x2` is scale=2, `model2`
  is model=2. Any other token, a value outside the choices or a key given twice is a ConfigError
  naming the file and the token.
  """
  from mrisr_jax.errors import ConfigError

  values = {k: (v[0] if isinstance(v, tuple) else v) for k, v in schema.items()}
  known = ', '.join(k if v is False else f'{k}={"|".join(map(str, v[1]))}' for k, v in schema.items())
  parsed, unknown = [], []
  for token in (t.strip() for t in (arg or '').split(',')):
    if not token:
      continue
    name, eq, raw = token.partition('=')
    if not eq:  # a switch, or an old token: x2 (scale), model2 (model)
      old = re.fullmatch(r'(x|[a-z_]+?)(\d+)', token)
      if old and (old[1] == 'x' and 'scale' in schema or old[1] in schema and schema[old[1]] is not False):
        name, raw = ('scale' if old[1] == 'x' else old[1]), old[2]
      elif schema.get(token) is False:
        raw = 'true'
    if name in schema and raw != '':
      parsed.append((name, raw, token))
    else:
      unknown.append(token)
  if unknown:  # before any value: a typo is the likelier mistake
    example = ','.join(k if v is False else f'{k}={v[1][0]}' for k, v in schema.items())
    raise ConfigError(
      f'{path}: unknown argument {",".join(sorted(unknown))!r} (known: {known}; combine '
      f'with commas, e.g. {path}:{example})'
    )
  given: dict[str, str] = {}
  for name, raw, token in parsed:
    if name in given:
      choices = 'true|false' if schema[name] is False else '|'.join(map(str, schema[name][1]))
      raise ConfigError(f'{path}: {name} given twice ({given[name]}, {token}): pick one of {name}={choices}')
    given[name] = token
    if schema[name] is False:
      if raw.lower() not in ('true', 'false', '1', '0'):
        raise ConfigError(f'{path}: {token!r}: {name} is a switch (true or false)')
      values[name] = raw.lower() in ('true', '1')
      continue
    default, choices = schema[name]
    try:
      value = type(default)(raw)
    except ValueError:
      kind = {int: 'an integer', float: 'a number'}.get(type(default), type(default).__name__)
      raise ConfigError(f'{path}: {token!r}: {name} takes {kind}') from None
    if value not in choices:
      raise ConfigError(f'{path}: {name}={value} is not supported (known: {", ".join(map(str, choices))})')
    values[name] = value
  return values


_SIBLINGS: dict[str, object] = {}


def load_sibling(file: str, name: str):
  """The module of the config file `name` beside `file` (a config file's __file__), loaded by path:
  config files run both imported (`configs.casrgan_x4`) and by path, where configs/ is no package."""
  import importlib.util

  path = pathlib.Path(file).resolve().with_name(name)
  if str(path) not in _SIBLINGS:
    spec = importlib.util.spec_from_file_location(f'mrisr_config_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _SIBLINGS[str(path)] = module
  return _SIBLINGS[str(path)]


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `FILE[:ARGS]` (what --config takes), loaded by path, unlocked; ConfigError if it
  cannot be (mrisr_jax.cli.load_config)."""
  from mrisr_jax import cli

  return cli.load_config(spec, lock=False)
