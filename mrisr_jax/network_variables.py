"""The variables ({'params', ['batch_stats']}) of a network: from a training workdir's checkpoint,
from a reference-layout state_dict file (.pth/.pt/.bin or .safetensors, as `mrisr_jax.export`
writes or the PyTorch reference saves), or freshly initialised as a training run would.

`infer`, `evaluate`, `export` and `import_torch` all load through here. Loaded variables are
checked against the network the config builds: a file strictly through
`convert.state_dict_to_flax` (missing, unexpected and mis-shaped keys all named), a checkpoint by
comparing its tree and shapes, so weights for another model or scale fail here with one line, not
inside XLA.

Which checkpoint of a workdir: `resolve_step` (the one place `infer`, `evaluate` and `export` choose
it). By default the run's best step by validation PSNR (the metric `mrisr_jax.checkpoint` keeps with
every validated step), else the latest when no step has a validation result; `--step latest` or
`--step N` pick another. The choice and its reason are logged as
`using step 120 of WORKDIR (best validation PSNR 31.20 dB; latest is 150)`.
"""

from __future__ import annotations

import pathlib

import numpy as np

from mrisr_jax.data.errors import OneLineError


class WeightsError(OneLineError):
  """One line naming the weights file or workdir at fault."""


def like_variables(config, model=None) -> dict:
  """ShapeDtypeStructs of the generator's variables, initialised as recipe.init_state_fn does."""
  import jax
  from mrisr_jax import recipe, registry

  g = model if model is not None else registry.build_generator(config.model)
  g_init, _ = recipe.network_inits(config, g, None)  # the discriminator is not needed here
  return jax.eval_shape(g_init, jax.random.PRNGKey(0))


def fresh(config, what: str = 'generator') -> dict:
  """The network as a fresh training run initialises it (same key), without initialising the other."""
  import jax
  from mrisr_jax import recipe, registry

  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  g_init, d_init = recipe.network_inits(config, g, d)
  g_rng, d_rng = jax.random.split(jax.random.PRNGKey(config.seed))  # as recipe.init_state_fn
  variables = jax.jit(g_init)(g_rng) if what == 'generator' else jax.jit(d_init)(d_rng)
  return {k: v for k, v in jax.device_get(variables).items() if k in ('params', 'batch_stats') and v}


def from_state(state, what: str = 'generator') -> dict:
  """One network's variables out of a TrainState (or its restored dict); what: 'generator',
  'discriminator' or 'ema' (the generator EMA)."""
  get = (lambda k: state.get(k, {})) if isinstance(state, dict) else (lambda k: getattr(state, k))
  prefix = 'd' if what == 'discriminator' else 'g'
  out = {'params': get('g_ema_params' if what == 'ema' else f'{prefix}_params')}
  if what == 'ema' and not out['params']:
    raise WeightsError('this run keeps no generator EMA (it trained with config.ema_decay=0); export --what generator')
  stats = get(f'{prefix}_batch_stats')
  if stats:
    out['batch_stats'] = stats
  return out


STEP_CHOICES = ('best', 'latest')
STEP_HELP = (
  'Checkpoint of a training workdir: best (the step with the best validation PSNR; the latest when no '
  'step was validated), latest, or a saved step number (default: best).'
)


def parse_step(step) -> str | int:
  """`--step` as given (None, 'best', 'latest', a step number or its digits) as 'best', 'latest' or
  an int; anything else raises WeightsError (without the saved steps: `resolve_step` lists them)."""
  if step is None:
    return 'best'
  if isinstance(step, bool):
    raise WeightsError(f'--step {step!r}: use best, latest or a saved step number')
  if isinstance(step, (int, np.integer)):
    return int(step)
  text = str(step).strip().lower()
  if text in STEP_CHOICES:
    return text
  if text.isdigit():
    return int(text)
  raise WeightsError(f'--step {step}: use best, latest or a saved step number')


def _psnr(ckpt, step: int) -> float | None:
  """The validation PSNR saved with `step`, or None (not validated, or saved before metrics were kept)."""
  from mrisr_jax.checkpoint import BEST_METRIC

  try:
    metrics = ckpt.manager.metrics(step)
  except (OSError, ValueError, KeyError):
    return None
  value = metrics.get(BEST_METRIC) if isinstance(metrics, dict) else None
  return float(value) if value is not None else None


def _choose(ckpt, workdir: pathlib.Path, step) -> tuple[int, str]:
  steps = sorted(ckpt.manager.all_steps())
  if not steps:
    raise WeightsError(f'{workdir / "checkpoints"}: no checkpoint saved yet')
  saved = ', '.join(map(str, steps))
  try:
    want = parse_step(step)
  except WeightsError as e:
    raise WeightsError(f'{workdir}: {e} (saved: {saved})') from None
  latest = steps[-1]
  best = ckpt.best_step()
  best_psnr = _psnr(ckpt, best) if best is not None else None
  if best_psnr is None:
    best = None
  best_text = f'best validation PSNR {best_psnr:.2f} dB' if best is not None else ''
  if want == 'best':
    if best is None:
      return latest, 'the latest; no checkpoint has a validation PSNR saved with it, so there is no best step'
    if best == latest:
      return best, f'the latest, also the {best_text}'
    return best, f'{best_text}; latest is {latest}'
  if want == 'latest':
    return latest, 'the latest, as asked' + (f'; {best_text} is step {best}' if best not in (None, latest) else '')
  if want not in steps:
    raise WeightsError(f'{workdir / "checkpoints"}: no checkpoint at step {want} (saved: {saved})')
  notes = ['as asked'] + ([f'{best_text} is step {best}'] if best not in (None, want) else [])
  notes += [f'latest is {latest}'] if want != latest else []
  return want, '; '.join(notes)


def _open(workdir):
  from mrisr_jax.checkpoint import Checkpointer

  workdir = pathlib.Path(workdir)
  if not (workdir / 'checkpoints').is_dir():
    raise WeightsError(f'{workdir}: no checkpoints directory (is this a training workdir?)')
  return workdir, Checkpointer(workdir, async_save=False)


def resolve_step(workdir, step=None) -> tuple[int, str]:
  """(step, reason): the checkpoint of training workdir `workdir` that `step` names.

  step: None or 'best' (the step with the best validation PSNR; the latest when no step has one),
  'latest', or a saved step number (an int or its digits). reason says why, in words, e.g.
  'best validation PSNR 31.20 dB; latest is 150'. A bad value or a step not saved raises WeightsError
  listing the saved steps.
  """
  workdir, ckpt = _open(workdir)
  try:
    return _choose(ckpt, workdir, step)
  finally:
    ckpt.close()


def step_line(workdir, step: int, reason: str) -> str:
  """'using step 120 of WORKDIR (best validation PSNR 31.20 dB; latest is 150)'."""
  return f'using step {step} of {workdir} ({reason})'


def from_workdir(workdir, step=None, what: str = 'generator', *, with_reason: bool = False):
  """(variables, step) of a training workdir's checkpoint: `step` as `resolve_step` takes it (default:
  the best by validation PSNR, else the latest); with_reason: (variables, step, reason)."""
  workdir, ckpt = _open(workdir)
  try:
    step, reason = _choose(ckpt, workdir, step)
    variables = from_state(ckpt.restore_unsharded(step), what)
  finally:
    ckpt.close()
  return (variables, step, reason) if with_reason else (variables, step)


def from_state_dict_file(path, name: str, like: dict) -> dict:
  """A reference-layout state_dict file as the variables of model `name`, strictly shaped as `like`."""
  from mrisr_jax.interop import convert, state_dict_io

  path = pathlib.Path(path)
  suffixes = state_dict_io.SAFETENSORS_SUFFIXES + state_dict_io.TORCH_LOAD_SUFFIXES
  if path.suffix.lower() not in suffixes:
    raise WeightsError(
      f'{path}: unknown weights suffix {path.suffix!r}; give a training workdir or a {", ".join(suffixes)} state_dict'
    )
  if name not in convert.SUPPORTED:
    raise WeightsError(
      f'{path}: model {name!r} has no reference state_dict layout; load it from a '
      f'training workdir instead (file layouts: {", ".join(convert.SUPPORTED)})'
    )
  try:
    state_dict = state_dict_io.load_state_dict(path)
  except (OSError, ValueError, ImportError) as e:
    raise WeightsError(f'{path}: cannot read the state_dict ({e})') from None
  try:
    return convert.state_dict_to_flax(name, state_dict, like)
  except ValueError as e:  # strict: names missing / unexpected / mis-shaped keys
    raise WeightsError(f'{path}: {e}') from None


def _shapes(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if hasattr(v, 'items'):
      out.update(_shapes(v, prefix + (str(k),)))
    else:
      out['/'.join(prefix + (str(k),))] = tuple(np.shape(v))
  return out


def check_shapes(variables: dict, like: dict, source, name: str) -> None:
  """Raises WeightsError naming (up to three of) the missing, unexpected and mis-shaped arrays."""
  got, want = _shapes(variables), _shapes(dict(like))
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  mismatched = [f'{k}: checkpoint {got[k]}, model {want[k]}' for k in want if k in got and got[k] != want[k]]
  if missing or unexpected or mismatched:
    parts = []
    for label, items in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)):
      if items:
        parts.append(f'{label} {len(items)} ({", ".join(items[:3])}{", ..." if len(items) > 3 else ""})')
    raise WeightsError(f'{source}: checkpoint does not fit {name}: {"; ".join(parts)}')


def load_generator(
  config, weights, model=None, *, step=None, ema: bool | None = None, log=None
) -> tuple[dict, dict | None]:
  """(variables, chosen): {'params': ..., ['batch_stats': ...]} of numpy arrays for
  `registry.build_generator(config.model)`, and for a workdir {'step', 'reason'} (None for a file).

  weights: a training workdir (the checkpoint `resolve_step(weights, step)` picks: by default the
  best by validation PSNR) or a .pth/.pt/.bin/.safetensors state_dict (step must then be None).
  ema: take a workdir's generator EMA (default: when config.ema_decay > 0, the network validation
  scored). log: called with the `step_line` of a workdir's choice (default: absl logging.info).
  """
  import jax

  path = pathlib.Path(weights)
  name = config.model.name
  if not path.exists():
    raise WeightsError(f'{path}: no such weights file or training workdir')
  if path.is_dir():
    if ema is None:
      ema = config.get('ema_decay', 0.0) > 0
    variables, step, reason = from_workdir(path, step, 'ema' if ema else 'generator', with_reason=True)
    if log is None:
      from absl import logging

      log = logging.info
    log(step_line(path, step, reason))
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    check_shapes(variables, like_variables(config, model), path, name)
    return variables, {'step': step, 'reason': reason}
  if step is not None:
    raise WeightsError(f'{path}: --step applies to a training workdir, not a state_dict file')
  like = like_variables(config, model)
  variables = from_state_dict_file(path, name, like)
  if 'batch_stats' in like and 'batch_stats' not in variables:  # TransMRSR's SDT centroids live beside it
    variables['batch_stats'] = file_centroids(config, path, like['batch_stats'])
  return variables, None


def file_centroids(config, path: pathlib.Path, like: dict) -> dict:
  """TransMRSR's SDT centroids for a state_dict file (the public code keeps them in .npy files):
  config.transmrsr.centroids, or the folder `export` writes beside the file."""
  from mrisr_jax import sdt_centroids

  raw = getattr(config, 'config', None) or config  # a RunSpec keeps its ConfigDict
  given = raw.get('transmrsr', {}).get('centroids', '')
  source = pathlib.Path(given) if given else path.with_name(path.stem + '_centroids') / 'centroids.npy'
  if not source.exists():
    raise WeightsError(
      f'{path}: the SDT centroids are not in the state_dict; pass --config.transmrsr.centroids=FILE.npy|DIR '
      f'(or --config.model.sdt=off); looked for {source}'
    )
  centers = sdt_centroids.load_centroids(source)
  want = tuple(like['sdt']['centroids'].shape)
  if centers.shape != want:
    raise WeightsError(f'{source}: centroids of shape {centers.shape}, the model needs {want}')
  return {'sdt': {'centroids': centers}}


def load_generator_variables(config, weights, model=None, *, step=None, ema: bool | None = None, log=None) -> dict:
  """The variables of `load_generator` (which see), without the step it chose."""
  return load_generator(config, weights, model, step=step, ema=ema, log=log)[0]
