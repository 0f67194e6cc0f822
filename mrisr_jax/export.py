"""Export weights in the CASRGAN PyTorch reference's state_dict layout.

  python -m mrisr_jax.export --config configs/casrgan_x4.py [--workdir DIR] [--step best|latest|N] \
      [--what generator|discriminator|ema] --out FILE.safetensors|FILE.pth

With --workdir: the run's checkpoint (by default the step with the best validation PSNR, else the
latest; --step latest or --step N pick another: mrisr_jax.network_variables.resolve_step). Without:
the freshly initialised model of the config, seeded by --config.seed exactly as training initialises
it (for parity checks). The file's suffix picks the format: .safetensors (recommended) or .pth
(torch.save of a state_dict; needs torch). A JSON beside it (FILE with the suffix .json) records the
model config, the source, the step and why that step. Neither the weights file nor the JSON replaces
an existing file unless --overwrite: if either exists, nothing is written.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags

from mrisr_jax import cli
from mrisr_jax.errors import UserError
from mrisr_jax.network_variables import STEP_HELP


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so the module imports anywhere."""
  flags.DEFINE_string('config', None, cli.CONFIG_HELP)
  flags.DEFINE_string('workdir', None, 'Training run to export from (default: a fresh init).')
  flags.DEFINE_string('step', None, 'With --workdir: ' + STEP_HELP)
  flags.DEFINE_enum(
    'what',
    'generator',
    list(WHAT),
    'Which network: the generator, the discriminator, or the generator EMA (runs with config.ema_decay > 0).',
  )
  flags.DEFINE_string('out', None, 'Output file: .safetensors (recommended) or .pth.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  flags.mark_flags_as_required(['config', 'out'])


SUFFIXES = ('.safetensors', '.pth', '.pt')
WHAT = ('generator', 'discriminator', 'ema')


class ExportError(UserError, ValueError):
  """One line naming the file, step or model at fault."""


def model_name(config, what: str) -> str:
  return config.discriminator.name if what == 'discriminator' else config.model.name


def export(
  config, out, *, workdir=None, step: int | str | None = None, what: str = 'generator', overwrite: bool = False
) -> dict:
  """Writes `out` (+ its .json) and returns the JSON record.

  step: with `workdir`, which checkpoint (network_variables.resolve_step: None or 'best', 'latest',
  a step number); the record holds the step used and `step_reason`, why.
  """
  import numpy as np

  from mrisr_jax import fileio, network_variables, spec
  from mrisr_jax.interop import convert, state_dict_io

  config = spec.resolve(config)  # checked once; below only the RunSpec
  out = pathlib.Path(out)
  if what not in WHAT:
    raise ExportError(f'--what {what!r}: use one of {", ".join(WHAT)}')
  if out.suffix not in SUFFIXES:
    raise ExportError(f'{out}: unknown suffix {out.suffix!r}; use one of {", ".join(SUFFIXES)}')
  record_path = out.with_suffix('.json')
  if not overwrite:  # both files are checked before either is written
    if out.exists():
      raise ExportError(f'{out}: exists; pass --overwrite to replace it')
    if record_path.exists():
      raise ExportError(
        f'{record_path}: exists (export writes its record beside {out.name}); pass --overwrite to replace it'
      )
  name = model_name(config, what)
  if name not in convert.SUPPORTED:
    raise ExportError(f'{what} {name!r} has no PyTorch layout yet; exportable: {", ".join(sorted(convert.SUPPORTED))}')
  reason = None
  if workdir:
    try:
      variables, step, reason = network_variables.from_workdir(workdir, step, what, with_reason=True)
    except network_variables.WeightsError as e:
      raise ExportError(str(e)) from None
    source = str(pathlib.Path(workdir).absolute())
  else:
    if step is not None:
      raise ExportError('--step needs --workdir (without it the fresh initialisation is exported)')
    if what == 'ema':
      raise ExportError('--what ema needs --workdir: a fresh initialisation has no EMA')
    variables, source = network_variables.fresh(config, what), f'fresh init, seed {config.seed}'
  state_dict = convert.flax_to_state_dict(name, variables)
  record = {
    'model': name,
    'what': what,
    'source': source,
    'step': step,
    'step_reason': reason,
    'config': (config.discriminator if what == 'discriminator' else config.model).to_dict(),
    'keys': len(state_dict),
  }
  centroids = variables.get('batch_stats', {}).get('sdt', {}).get('centroids') if name == 'transmrsr' else None
  if centroids is not None:  # TransMRSR's SDT centroids: not in its state_dict; the public code reads .npy files
    from mrisr_jax import sdt_centroids

    folder = out.with_name(out.stem + '_centroids')
    if folder.exists() and not overwrite:
      raise ExportError(f'{folder}: exists (export writes the SDT centroids there); pass --overwrite to replace it')
    sdt_centroids.save_centroids(folder, np.asarray(centroids))
    record['centroids'] = str(folder)
  out.parent.mkdir(parents=True, exist_ok=True)
  metadata = {'mrisr_jax': json.dumps({k: v for k, v in record.items() if k != 'config'})}
  state_dict_io.save_state_dict(state_dict, out, metadata if out.suffix == '.safetensors' else None)
  fileio.write_json(record_path, record)
  return record


def main(config):
  f = flags.FLAGS
  record = export(config, f.out, workdir=f.workdir, step=f.step, what=f.what, overwrite=f.overwrite)
  if record['step_reason'] is not None:
    from mrisr_jax.network_variables import step_line

    print(step_line(f.workdir, record['step'], record['step_reason']))
  print(
    f'wrote {f.out}: {record["what"]} {record["model"]}, {record["keys"]} tensors, '
    f'from {record["source"]}' + (f' step {record["step"]}' if record['step'] is not None else '')
  )


def run():  # python -m mrisr_jax.export, mrisr-export; a missing optional package (torch) is a user error too
  define_flags()
  cli.run(main, user_errors=(ImportError,))


if __name__ == '__main__':
  run()
