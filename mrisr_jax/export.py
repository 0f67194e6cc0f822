"""Export weights in the CASRGAN PyTorch reference's state_dict layout.

  python -m mrisr_jax.export --config configs/casrgan_x4.py [--workdir DIR] [--step N] \
      [--what generator|discriminator|ema] --out FILE.safetensors|FILE.pth

With --workdir: the run's checkpoint (the latest, or --step N). Without: the freshly initialised
model of the config, seeded by --config.seed exactly as training initialises it (for parity checks).
The file's suffix picks the format: .safetensors (recommended) or .pth (torch.save of a state_dict;
needs torch). A JSON beside it (FILE with the suffix .json) records the model config, the source and
the step. An existing output is kept unless --overwrite.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags
from ml_collections import config_flags



def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so the module imports anywhere."""
  config_flags.DEFINE_config_file('config', None, 'Config file, optionally FILE:ARG.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Training run to export from (default: a fresh init).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_enum('what', 'generator', list(WHAT), 'Which network: the generator, the discriminator, '
                    'or the generator EMA (runs with config.ema_decay > 0).')
  flags.DEFINE_string('out', None, 'Output file: .safetensors (recommended) or .pth.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  flags.mark_flags_as_required(['config', 'out'])


SUFFIXES = ('.safetensors', '.pth', '.pt')
WHAT = ('generator', 'discriminator', 'ema')


class ExportError(ValueError):
  """One line naming the file, step or model at fault."""


def _fresh_variables(config, what: str) -> dict:
  """The network as a fresh training run initialises it (same key), without initialising the other."""
  import jax
  from mrisr_jax import recipe, registry
  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  g_init, d_init = recipe.network_inits(config, g, d)
  g_rng, d_rng = jax.random.split(jax.random.PRNGKey(config.seed))   # as recipe.init_state_fn
  variables = jax.jit(g_init)(g_rng) if what == 'generator' else jax.jit(d_init)(d_rng)
  return {k: v for k, v in jax.device_get(variables).items() if k in ('params', 'batch_stats') and v}


def _variables(state, what: str) -> dict:
  get = (lambda k: state.get(k, {})) if isinstance(state, dict) else (lambda k: getattr(state, k))
  prefix = 'd' if what == 'discriminator' else 'g'
  out = {'params': get('g_ema_params' if what == 'ema' else f'{prefix}_params')}
  if what == 'ema' and not out['params']:
    raise ExportError('this run keeps no generator EMA (it trained with config.ema_decay=0); '
                      'export --what generator')
  stats = get(f'{prefix}_batch_stats')
  if stats:
    out['batch_stats'] = stats
  return out


def _checkpoint_variables(workdir: pathlib.Path, step: int | None, what: str) -> tuple[dict, int]:
  from mrisr_jax.checkpoint import Checkpointer
  if not (workdir / 'checkpoints').is_dir():
    raise ExportError(f'{workdir}: no checkpoints directory (is this a training workdir?)')
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    steps = list(ckpt.manager.all_steps())
    if not steps:
      raise ExportError(f'{workdir / "checkpoints"}: no checkpoint saved yet')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise ExportError(f'{workdir / "checkpoints"}: no checkpoint at step {step} (saved: '
                        f'{", ".join(map(str, sorted(steps)))})')
    return _variables(ckpt.restore_unsharded(step), what), step
  finally:
    ckpt.close()


def model_name(config, what: str) -> str:
  return config.discriminator.name if what == 'discriminator' else config.model.name


def export(config, out, *, workdir=None, step: int | None = None, what: str = 'generator',
           overwrite: bool = False) -> dict:
  """Writes `out` (+ its .json) and returns the JSON record."""
  from mrisr_jax.interop import convert, state_dict_io
  out = pathlib.Path(out)
  if what not in WHAT:
    raise ExportError(f'--what {what!r}: use one of {", ".join(WHAT)}')
  if out.suffix not in SUFFIXES:
    raise ExportError(f'{out}: unknown suffix {out.suffix!r}; use one of {", ".join(SUFFIXES)}')
  if out.exists() and not overwrite:
    raise ExportError(f'{out}: exists; pass --overwrite to replace it')
  name = model_name(config, what)
  if name not in convert.SUPPORTED:
    raise ExportError(f'{what} {name!r} has no PyTorch layout yet; exportable: '
                      f'{", ".join(sorted(convert.SUPPORTED))}')
  if workdir:
    variables, step = _checkpoint_variables(pathlib.Path(workdir), step, what)
    source = str(pathlib.Path(workdir).absolute())
  else:
    if step is not None:
      raise ExportError('--step needs --workdir (without it the fresh initialisation is exported)')
    if what == 'ema':
      raise ExportError('--what ema needs --workdir: a fresh initialisation has no EMA')
    variables, source = _fresh_variables(config, what), f'fresh init, seed {config.seed}'
  state_dict = convert.flax_to_state_dict(name, variables)
  record = {'model': name, 'what': what, 'source': source, 'step': step,
            'config': json.loads(config.discriminator.to_json_best_effort() if what == 'discriminator'
                                 else config.model.to_json_best_effort()),
            'keys': len(state_dict)}
  out.parent.mkdir(parents=True, exist_ok=True)
  metadata = {'mrisr_jax': json.dumps({k: v for k, v in record.items() if k != 'config'})}
  state_dict_io.save_state_dict(state_dict, out, metadata if out.suffix == '.safetensors' else None)
  out.with_suffix('.json').write_text(json.dumps(record, indent=2) + '\n')
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from mrisr_jax import errors
  f = flags.FLAGS
  try:
    record = export(f.config, f.out, workdir=f.workdir, step=f.step, what=f.what, overwrite=f.overwrite)
  except (ExportError, ImportError) + errors.USER_ERRORS as e:
    errors.exit_with(e)
  print(f'wrote {f.out}: {record["what"]} {record["model"]}, {record["keys"]} tensors, '
        f'from {record["source"]}' + (f' step {record["step"]}' if record['step'] is not None else ''))


if __name__ == '__main__':
  define_flags()
  app.run(main)
