"""Import a reference-layout PyTorch checkpoint as a training checkpoint that `main` continues from.

  python -m mrisr_jax.import_torch --config configs/casrgan_x4.py --checkpoint casr_x4.pth \
      --workdir runs/from_torch [--stage gan] [--what generator|discriminator]

The state_dict (`.pth` read with torch.load(weights_only=True), or without torch by a reader that
accepts only tensors; `.safetensors`) must fit the config's model exactly: missing, unexpected and
mis-shaped keys are named and nothing is written. The new workdir gets an orbax checkpoint at the
first step of --stage (default: the first stage) holding a fresh training state with the imported
network, so `python -m mrisr_jax.main --config ... --workdir DIR` trains from it: e.g.
--stage gan uses a PyTorch-pre-trained generator for the GAN stage. Optimizer states start fresh, as
every stage does, and the data pipeline starts at its first batch. The stage boundaries depend on
the number of training slices, so run it with the same data config as the training.
"""

from __future__ import annotations

import pathlib

from absl import flags

from mrisr_jax import cli
from mrisr_jax.errors import UserError


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so the module imports anywhere."""
  flags.DEFINE_string('config', None, cli.CONFIG_HELP)
  flags.DEFINE_string('checkpoint', None, 'Reference-layout state_dict: .pth/.pt or .safetensors.')
  flags.DEFINE_string('workdir', None, 'New training workdir to create.')
  flags.DEFINE_string('stage', None, 'Stage to continue with (default: the first one).')
  flags.DEFINE_enum('what', 'generator', ['generator', 'discriminator'], 'Which network it holds.')
  flags.mark_flags_as_required(['config', 'checkpoint', 'workdir'])


class TorchImportError(UserError, ValueError):
  """One line naming the file, stage or workdir at fault."""


def import_checkpoint(config, checkpoint, workdir, *, stage: str | None = None, what: str = 'generator') -> dict:
  """Writes the orbax checkpoint; returns {'step', 'stage', 'keys'}."""
  import json

  import jax
  import numpy as np
  from mrisr_jax import fileio, network_variables, recipe, registry, resume_guard, spec
  from mrisr_jax.checkpoint import Checkpointer
  from mrisr_jax.data import pipeline
  from mrisr_jax.interop import convert

  checkpoint, workdir = pathlib.Path(checkpoint), pathlib.Path(workdir)
  if not checkpoint.is_file():
    raise TorchImportError(f'{checkpoint}: no such file')
  if (workdir / 'checkpoints').exists() and any((workdir / 'checkpoints').iterdir()):
    raise TorchImportError(f'{workdir}: already holds checkpoints; import into a new workdir')
  name = config.model.name if what == 'generator' else config.discriminator.name
  if name not in convert.SUPPORTED:
    raise TorchImportError(
      f'{what} {name!r} has no PyTorch layout yet; importable: {", ".join(sorted(convert.SUPPORTED))}'
    )
  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  config = spec.resolve(config)
  spe, plan = recipe.plan_run(config, pipeline.num_train_slices(config.data, config.scale))
  stage = stage or plan[0].name
  target = next((s for s in plan if s.name == stage), None)
  if target is None:
    raise TorchImportError(f'--stage {stage!r} is not a stage of this config ({", ".join(s.name for s in plan)})')
  init = recipe.init_state_fn(config, g, d, *recipe.make_optimizers(config, plan[0], spe))
  rng = jax.random.PRNGKey(config.seed)
  shapes = jax.eval_shape(init, rng)  # check the file against the model before any compute
  prefix = 'g' if what == 'generator' else 'd'
  like = {'params': getattr(shapes, f'{prefix}_params')}
  if getattr(shapes, f'{prefix}_batch_stats'):
    like['batch_stats'] = getattr(shapes, f'{prefix}_batch_stats')
  try:
    loaded = network_variables.from_state_dict_file(checkpoint, name, like)
    if 'batch_stats' in like and 'batch_stats' not in loaded:  # TransMRSR's SDT centroids live beside it
      loaded['batch_stats'] = network_variables.file_centroids(config, checkpoint, like['batch_stats'])
  except network_variables.WeightsError as e:
    raise TorchImportError(str(e)) from None
  state = jax.device_get(jax.jit(init)(rng))  # the rest of the state, as a fresh run has it
  updates = {f'{prefix}_params': loaded['params'], 'step': np.asarray(target.start, np.int32)}
  if 'batch_stats' in loaded:
    updates[f'{prefix}_batch_stats'] = loaded['batch_stats']
  if what == 'generator' and state.g_ema_params:  # the EMA starts from the imported generator
    updates['g_ema_params'] = loaded['params']
  state = state.replace(**updates)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, async_save=False)
  try:
    ckpt.save(
      target.start,
      state,
      {
        'stage': target.name,
        'step': target.start,
        'imported_from': str(checkpoint.absolute()),
        'what': what,
        'config': json.loads(config.config.to_json_best_effort()),
        'plan': resume_guard.plan_meta(plan),
      },
    )
  finally:
    ckpt.close()
  fileio.write_text(workdir / 'config.json', config.config.to_json_best_effort(indent=2))
  return {'step': target.start, 'stage': target.name, 'keys': len(jax.tree.leaves(loaded))}


def styleswin_state_dict(path, which: str = 'g_ema') -> dict:
  """One network of a StyleSwin training checkpoint (`torch.save({'g', 'd', 'g_ema', ..., 'args'})`, the
  format of TransMRSR's `styleswin_900000.pt`) as numpy arrays, or a flat state_dict file as it is.
  The checkpoint's `args` is an argparse.Namespace, the one object besides tensors that is allowed."""
  import argparse

  import numpy as np

  from mrisr_jax.interop import state_dict_io

  path = pathlib.Path(path)
  if not path.is_file():
    raise TorchImportError(f'{path}: no such file')
  if path.suffix.lower() in state_dict_io.SAFETENSORS_SUFFIXES:
    return state_dict_io.load_state_dict(path)
  try:
    import torch
  except ImportError as e:
    raise TorchImportError(f'{path}: reading a StyleSwin checkpoint needs torch (pip install -e ".[torch]")') from e
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # noqa: BLE001  (torch raises many types for foreign or damaged files)
    raise TorchImportError(f'{path}: not a readable StyleSwin checkpoint ({" ".join(str(e).split())[:200]})') from None
  if isinstance(obj, dict) and which in obj and isinstance(obj[which], dict):
    obj = obj[which]
  elif not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
    keys = ', '.join(map(repr, list(obj)[:10])) if isinstance(obj, dict) else type(obj).__name__
    raise TorchImportError(f'{path}: no {which!r} entry and not a flat state_dict (top level: {keys})')
  return {k: np.array(v.detach().cpu().numpy()) for k, v in obj.items()}


def styleswin_synthesis(path, prior) -> dict:
  """The synthesis params (TransMRSR's decoder) of a StyleSwin g_ema: every entry but `style.*` (the
  mapping network) and `to_rgbs.*`, strictly checked against config.prior's size and channels."""
  import jax
  import jax.numpy as jnp

  from mrisr_jax.interop import convert
  from mrisr_jax.models.styleswin import Synthesis

  state_dict = {k: v for k, v in styleswin_state_dict(path).items() if not k.startswith(('style.', 'to_rgbs.'))}
  synthesis = Synthesis(
    prior.size, style_dim=prior.style_dim, channel_multiplier=prior.channel_multiplier, channel_base=prior.channel_base
  )
  n_latent = 2 * (prior.size.bit_length() - 2)
  like = jax.eval_shape(synthesis.init, jax.random.PRNGKey(0), jnp.zeros((1, n_latent, prior.style_dim)))
  try:
    return convert.state_dict_to_flax('styleswin_synthesis', state_dict, like)['params']
  except ValueError as e:
    raise TorchImportError(f'{path}: {e}') from None


def main(config):
  f = flags.FLAGS
  out = import_checkpoint(config, f.checkpoint, f.workdir, stage=f.stage, what=f.what)
  print(
    f'wrote {f.workdir}: {f.what} from {f.checkpoint} ({out["keys"]} arrays) at step '
    f'{out["step"]}, the start of stage {out["stage"]}; continue with python -m mrisr_jax.main '
    f'--config ... --workdir {f.workdir}'
  )


def run():  # python -m mrisr_jax.import_torch, mrisr-import; a missing optional package (torch) is a user error too
  define_flags()
  cli.run(main, user_errors=(ImportError,))


if __name__ == '__main__':
  run()
