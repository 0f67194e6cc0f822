"""Generator weights for inference: a training workdir's latest checkpoint, or a reference-layout
state_dict file (.pth/.pt/.bin or .safetensors, as `mrisr_jax.export` writes or the PyTorch
reference saves).

Both are checked against the generator the config builds: a file strictly through
`convert.state_dict_to_flax` (missing, unexpected and mis-shaped keys all named), a checkpoint by
comparing its tree and shapes, so weights for another model or scale fail here with one line, not
inside XLA.
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
  g_init, _ = recipe.network_inits(config, g, None)   # the discriminator is not needed here
  return jax.eval_shape(g_init, jax.random.PRNGKey(0))


def _shapes(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if hasattr(v, 'items'):
      out.update(_shapes(v, prefix + (str(k),)))
    else:
      out['/'.join(prefix + (str(k),))] = tuple(np.shape(v))
  return out


def _check_against(variables: dict, like: dict, source: pathlib.Path, name: str) -> None:
  got, want = _shapes(variables), _shapes(dict(like))
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  mismatched = [f'{k}: checkpoint {got[k]}, model {want[k]}' for k in want
                if k in got and got[k] != want[k]]
  if missing or unexpected or mismatched:
    parts = []
    for label, items in (('missing', missing), ('unexpected', unexpected),
                         ('shape mismatch', mismatched)):
      if items:
        parts.append(f'{label} {len(items)} ({", ".join(items[:3])}{", ..." if len(items) > 3 else ""})')
    raise WeightsError(f'{source}: checkpoint does not fit {name}: {"; ".join(parts)}')


def load_generator_variables(config, weights, model=None) -> dict:
  """{'params': ..., ['batch_stats': ...]} of numpy arrays for `registry.build_generator(config.model)`.

  weights: a training workdir (its latest checkpoint; the generator EMA when config.ema_decay > 0) or a
  .pth/.pt/.bin/.safetensors state_dict.
  """
  import jax
  from mrisr_jax import export
  from mrisr_jax.interop import convert, state_dict_io
  path = pathlib.Path(weights)
  name = config.model.name
  if not path.exists():
    raise WeightsError(f'{path}: no such weights file or training workdir')
  if path.is_dir():
    try:
      # the network validation scored: the EMA generator when the run kept one
      what = 'ema' if config.get('ema_decay', 0.0) > 0 else 'generator'
      variables, _ = export._checkpoint_variables(path, None, what)
    except export.ExportError as e:
      raise WeightsError(str(e)) from None
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    _check_against(variables, like_variables(config, model), path, name)
    return variables
  suffixes = state_dict_io.SAFETENSORS_SUFFIXES + state_dict_io.TORCH_LOAD_SUFFIXES
  if path.suffix.lower() not in suffixes:
    raise WeightsError(f'{path}: unknown weights suffix {path.suffix!r}; give a training workdir or '
                       f'a {", ".join(suffixes)} state_dict')
  if name not in convert.SUPPORTED:
    raise WeightsError(f'{path}: model {name!r} has no reference state_dict layout; load it from a '
                       f'training workdir instead (file layouts: {", ".join(convert.SUPPORTED)})')
  try:
    state_dict = state_dict_io.load_state_dict(path)
  except (OSError, ValueError, ImportError) as e:
    raise WeightsError(f'{path}: cannot read the state_dict ({e})') from None
  try:
    return convert.state_dict_to_flax(name, state_dict, like_variables(config, model))
  except ValueError as e:   # strict: names missing / unexpected / mis-shaped keys
    raise WeightsError(f'{path}: {e}') from None
