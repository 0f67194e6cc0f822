"""Super-resolve images and volumes with trained (or imported) generator weights.

  python -m mrisr_jax.infer --config configs/edsr.py:x2 --weights WORKDIR|FILE.safetensors|FILE.pth
      --input IN --output OUT [--tile N] [--overlap N] [--batch N] [--overwrite]
      [--slice_axis A] [--thick_axis A] [--progress]

Formats, by suffix:
  .npy          a 2-D slice or a (S, H, W) stack, any real units -> .npy (same rank, float32, in
                the input's units; 2-D also -> .png)
  .png          read_grey, [0, 1] (colour or alpha is converted to grey with a warning naming the
                file) -> .png (16-bit when the input was, else 8-bit) or a 2-D .npy
  .nii/.nii.gz  the whole volume, streamed plane by plane in bounded memory (mrisr_jax.nifti_volume):
                in-plane (every plane across --slice_axis, default stored axis 2) or, for a
                thick-slice model, through-plane along --thick_axis (default: the axis with the
                largest voxel size) -> .nii/.nii.gz, float32 in the input's units (its
                scl_slope/scl_inter applied), voxel sizes of the refined axes divided by their
                factor, the affine moved so voxel centres stay consistent, orientation and
                sform/qform codes kept; a singular affine is a one-line error
  .h5           fastMRI: its target (FastMRISliceSource), normalised by the volume maximum ->
                .npy (the [0, 1] SR stack) or .h5 (dataset `reconstruction`, float32, in the
                input's intensities, as fastMRI's save_reconstructions writes it, so its
                evaluate.py reads it; the input's attrs plus the run's)

Intensities: the output is in the input's units and nothing is clipped (tiling.faithful_super_resolve).
The input x is divided by a scale p; the part inside the model's range, c = clip(x / p, 0, 1), goes
through the model, and the rest, x / p - c (voxels above p, negative voxels), is upsampled
bicubically (degrade.bicubic_resize, a = -0.75, the evaluate baseline's upsampling) and added back:
    SR = p * (model(c) + bicubic(x / p - c)).
So values above p are not flattened and negative values are kept (as their bicubic upsampling), and
SR differs from bicubic(x) by p * (model(c) - bicubic(c)): at most about p anywhere, ~0 where a
region is saturated (c = 1) and the model reproduces it. p is:
  NIfTI         the volume's 99.5th percentile (mrisr_jax.nifti_volume)
  .npy          1 when the stack lies in [0, 1] (then SR = model(x), as before); otherwise its
                maximum when that is above 1 (as evaluate rescales), else 1, with a logged warning
                saying so; an all-negative stack is still taken (all of it takes the bicubic path)
  .png, .h5     1 (they are read in [0, 1])
A .png output holds [0, 1]: an npy input with p != 1 is written as SR / p, and values outside
[0, 1] are clipped there with a logged warning (write .npy to keep them).
--tile N tiles slices larger than N x N LR pixels (see mrisr_jax.tiling). The input is never
overwritten, nor is an existing output unless --overwrite. Outputs are created with mode
0o666 & ~umask. SIGINT (Ctrl-C) or SIGTERM, even during the model's compile, removes the temporary
files, prints `mrisr_jax: interrupted by SIGINT|SIGTERM` and exits 130 / 143 (fileio.exit_on_signals).
"""

from __future__ import annotations

import os
import pathlib
import time

from absl import flags
import numpy as np

from mrisr_jax import cli
from mrisr_jax.data.errors import OneLineError


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so the module imports anywhere."""
  flags.DEFINE_string('config', None, cli.CONFIG_HELP)
  flags.DEFINE_string('weights', None, 'Training workdir (see --step) or a .pth/.safetensors state_dict.')
  flags.DEFINE_string(
    'step',
    None,
    'With a workdir --weights: best (the step with the best validation PSNR; the latest when no step '
    'was validated), latest, or a saved step number (default: best).',
  )
  flags.DEFINE_string('input', None, 'Input: .npy, .png, .nii, .nii.gz or fastMRI .h5.')
  flags.DEFINE_string('output', None, 'Output file (format from its suffix).')
  flags.DEFINE_integer('tile', 0, 'LR tile side for slices larger than this (0: whole slices).')
  flags.DEFINE_integer('overlap', 16, 'LR pixels of context each tile side discards.')
  flags.DEFINE_integer(
    'batch',
    0,
    'Tiles (or slices) per forward pass; 0: as many as keep one pass '
    '(mrisr_jax.tiling.AUTO_BATCH_PIXELS) output pixels, at most 8, which bounds memory.',
  )
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file (never the input).')
  flags.DEFINE_integer(
    'slice_axis',
    None,
    'NIfTI: the stored axis the model steps along (in-plane '
    'default 2; through-plane default the last axis that is not --thick_axis).',
  )
  flags.DEFINE_integer(
    'thick_axis',
    None,
    'NIfTI, thick-slice (through-plane) models: the stored axis '
    'with thick slices (default: the axis with the largest voxel size).',
  )
  flags.DEFINE_bool('progress', True, 'Show a progress bar over the slices.')
  flags.mark_flags_as_required(['config', 'weights', 'input', 'output'])


# input kind -> output kinds it can be written as
OUTPUTS = {'npy': ('npy', 'png'), 'png': ('png', 'npy'), 'nii': ('nii',), 'h5': ('npy', 'h5')}


class InferError(OneLineError):
  """One line naming the file or option at fault."""


# ---------------------------------------------------------------------------------------- driver


def infer(
  config,
  weights,
  input,
  output,
  *,
  tile: int = 0,
  overlap: int = 16,
  batch: int = 0,
  overwrite: bool = False,
  slice_axis: int | None = None,
  thick_axis: int | None = None,
  progress: bool = False,
  step=None,
) -> dict:
  """Reads `input`, super-resolves every slice, writes `output`; returns a summary record."""
  from mrisr_jax import fileio, network_variables, nifti_volume, registry, spec

  config = spec.resolve(config)  # checked once; below only the RunSpec
  from mrisr_jax.data import degrade
  from mrisr_jax.predictor import Predictor

  src, dst = pathlib.Path(input), pathlib.Path(output)
  in_kind, out_kind = fileio.stack_kind(src), fileio.stack_kind(dst)
  if in_kind is None:
    raise InferError(f'{src}: unknown input suffix; use .npy, .png, .nii, .nii.gz or .h5')
  if not src.is_file():
    raise InferError(f'{src}: no such input file')
  if out_kind not in OUTPUTS[in_kind]:
    raise InferError(
      f'{dst}: a {in_kind} input can be written as {" or ".join("." + k for k in OUTPUTS[in_kind])}, not {dst.name!r}'
    )
  if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
    raise InferError(f'{dst}: is the input file; choose another output')
  if dst.exists() and not overwrite:
    raise InferError(f'{dst}: exists; pass --overwrite to replace it')
  if in_kind != 'nii' and (slice_axis is not None or thick_axis is not None):
    raise InferError(f'{src}: --slice_axis/--thick_axis apply to NIfTI volumes only')
  model = registry.build_generator(config.model)
  variables = network_variables.load_generator_variables(config, weights, model, step=step, log=print)
  scale = config.model.scale
  factors = degrade.lr_factors(config.data.degradation, scale)
  predictor = Predictor(model, variables, tile=tile, overlap=overlap, batch=batch)

  def sr_stack(lr, bar=None):
    return predictor(lr, factors=factors, progress=bar)

  record = {
    'model': config.model.name,
    'scale': scale,
    'factors': tuple(factors),
    'weights': str(weights),
    'input': str(src),
    'output': str(dst),
    'tile': tile,
    'overlap': overlap,
  }
  dst.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  if in_kind == 'nii':
    try:
      done = nifti_volume.super_resolve_volume(
        src,
        dst,
        sr_stack,
        factors,
        slice_axis=slice_axis,
        thick_axis=thick_axis,
        chunk=max(8, batch),
        progress=progress,
      )
    except nifti_volume.VolumeError as e:
      raise InferError(str(e)) from None
    record.update(
      mode=done['mode'],
      slices=int(done['shape'][done['axis']]),
      lr_shape=tuple(n // f for n, f in zip(done['shape'], done['factors'])),
      sr_shape=done['shape'],
      zooms=done['zooms'],
      intensity_scale=done['hi'],
      notes=[],
      seconds=time.perf_counter() - start,
    )
    return record
  try:
    lr, info = fileio.read_stack(src, in_kind)
  except fileio.FileError as e:
    raise InferError(str(e)) from None
  if out_kind == 'png' and info['ndim'] != 2:
    raise InferError(f'{dst}: a .png output needs a 2-D input; {src} holds {lr.shape[0]} slices')
  from absl import logging
  from tqdm import tqdm

  from mrisr_jax.tiling import faithful_super_resolve

  p, notes = model_scale(lr, src)
  with tqdm(total=lr.shape[0], unit='slice', disable=not progress, leave=False) as bar:
    sr = faithful_super_resolve(lambda c: sr_stack(c, lambda n: bar.update(n - bar.n)), lr, p, factors)
  if out_kind == 'png':  # a png holds [0, 1]: the model's units
    sr = sr / np.float32(p)
    outside = float(np.mean((sr < 0) | (sr > 1)))
    if outside:
      notes.append(
        f'{dst}: {outside:.2%} of the output lies outside [0, 1] (range [{sr.min():.4g}, {sr.max():.4g}]) '
        'and is clipped by the .png; write .npy to keep it'
      )
  for note in notes:
    logging.warning('%s', note)
  record.update(
    mode='in-plane' if factors[0] == factors[1] else 'through-plane',
    slices=int(lr.shape[0]),
    lr_shape=tuple(lr.shape[1:]),
    sr_shape=tuple(sr.shape[1:]),
    intensity_scale=p,
    notes=notes,
    seconds=time.perf_counter() - start,
  )
  fileio.write_stack(
    dst, out_kind, sr, info, {k: record[k] for k in ('model', 'scale', 'weights', 'input', 'tile', 'overlap')}
  )
  return record


def model_scale(x: np.ndarray, path) -> tuple[float, list[str]]:
  """(p, notes): the scale that brings a stack to the model's [0, 1] (module docstring,
  "Intensities"): 1 inside [0, 1], else its maximum when above 1, else 1; a note says what was done."""
  lo, hi = float(x.min()), float(x.max())
  if lo >= 0 and hi <= 1:
    return 1.0, []
  p = hi if hi > 1 else 1.0
  what = [f'divided by its maximum {hi:g} for the model'] if hi > 1 else []
  if lo < 0:
    what.append(f'its {np.count_nonzero(x < 0)} negative value(s) upsampled bicubically, not clipped')
  return p, [
    f"{path}: values in [{lo:g}, {hi:g}] are outside the model's [0, 1]: {'; '.join(what)}; "
    "the output is in the input's units (see mrisr_jax.infer, Intensities)"
  ]


def summary_line(r: dict) -> str:
  shape = lambda dims: 'x'.join(str(d) for d in dims)  # noqa: E731
  tiles = f', {r["tile"]}-pixel tiles' if r['tile'] else ''
  what = 'volume' if len(r['lr_shape']) == 3 else f'{r["slices"]} slice(s)'
  return (
    f'wrote {r["output"]}: {what} {shape(r["lr_shape"])} -> {shape(r["sr_shape"])} '
    f'({r["model"]} x{r["scale"]} {r["mode"]}{tiles}) in {r["seconds"]:.1f} s'
  )


def main(config):
  f = flags.FLAGS
  record = infer(
    config,
    f.weights,
    f.input,
    f.output,
    tile=f.tile,
    overlap=f.overlap,
    batch=f.batch,
    overwrite=f.overwrite,
    slice_axis=f.slice_axis,
    thick_axis=f.thick_axis,
    progress=f.progress,
    step=f.step,
  )
  print(summary_line(record))


def run():  # python -m mrisr_jax.infer, mrisr-infer; a missing optional package (torch) is a user error too
  from mrisr_jax import fileio

  define_flags()
  with fileio.exit_on_signals():  # Ctrl-C / SIGTERM: temporaries removed, one line, exit 130 / 143
    cli.run(main, user_errors=(ImportError,))


if __name__ == '__main__':
  run()
