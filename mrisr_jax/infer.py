"""Super-resolve images and volumes with trained (or imported) generator weights.

  python -m mrisr_jax.infer --config configs/edsr.py:x2 --weights WORKDIR|FILE.safetensors|FILE.pth
      --input IN --output OUT [--tile N] [--overlap N] [--batch N] [--overwrite]

Formats, by suffix:
  .npy          a 2-D slice or a (S, H, W) stack in [0, 1] (what the model expects) -> .npy (same
                rank; 2-D also -> .png)
  .png          read_grey -> .png (16-bit when the input was, else 8-bit) or a 2-D .npy
  .nii/.nii.gz  every slice along axis 2 of the stored array (axes 0, 1 in-plane), normalised by
                the volume's 99.5th percentile (clipped to [0, 1]) and mapped back to the input
                intensities -> .nii/.nii.gz, float32, voxel sizes of axes 0 and 1 divided by the
                scale, the affine rescaled so voxel centres stay consistent, orientation codes kept
  .h5           fastMRI: its target (FastMRISliceSource), normalised by the volume maximum ->
                .npy (the [0, 1] SR stack) or .h5 (dataset `reconstruction_sr` in the input's
                intensities, the input's attrs plus the run's)
--tile N tiles slices larger than N x N LR pixels (see mrisr_jax.tiling). The input is never
overwritten, nor is an existing output unless --overwrite.
"""
from __future__ import annotations

import os
import pathlib
import time

from absl import app, flags
from ml_collections import config_flags


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so the module imports anywhere."""
  config_flags.DEFINE_config_file('config', None, 'Config file, optionally FILE:ARG.', lock_config=True)
  flags.DEFINE_string('weights', None, 'Training workdir (latest checkpoint) or a .pth/.safetensors '
                      'state_dict.')
  flags.DEFINE_string('input', None, 'Input: .npy, .png, .nii, .nii.gz or fastMRI .h5.')
  flags.DEFINE_string('output', None, 'Output file (format from its suffix).')
  flags.DEFINE_integer('tile', 0, 'LR tile side for slices larger than this (0: whole slices).')
  flags.DEFINE_integer('overlap', 16, 'LR pixels of context each tile side discards.')
  flags.DEFINE_integer('batch', 8, 'Tiles (or slices) per forward pass.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  flags.mark_flags_as_required(['config', 'weights', 'input', 'output'])


# input kind -> output kinds it can be written as
OUTPUTS = {'npy': ('npy', 'png'), 'png': ('png', 'npy'), 'nii': ('nii',), 'h5': ('npy', 'h5')}
NIFTI_PERCENTILE = 99.5


class InferError(ValueError):
  """One line naming the file or option at fault."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


def _kind(path: pathlib.Path) -> str | None:
  name = path.name.lower()
  if name.endswith('.nii') or name.endswith('.nii.gz'):
    return 'nii'
  return {'.npy': 'npy', '.png': 'png', '.h5': 'h5', '.hdf5': 'h5'}.get(path.suffix.lower())


def _tmp_path(path: pathlib.Path) -> pathlib.Path:
  # keep the full suffix (.nii.gz picks compression)
  return path.with_name(f'.tmp{os.getpid()}.{path.name}')


def _atomic(path: pathlib.Path, write) -> None:
  tmp = _tmp_path(path)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


# ---------------------------------------------------------------------------------------- reading


def _read(path: pathlib.Path, kind: str):
  """(stack (S, h, w) float32 in [0, 1], info for writing)."""
  import numpy as np
  if kind == 'npy':
    try:
      x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise InferError(f'{path}: cannot read as .npy ({e})') from None
    if x.ndim not in (2, 3) or x.size == 0 or x.dtype.kind not in 'biuf':
      raise InferError(f'{path}: expected a real 2-D slice or (S, H, W) stack, got {x.dtype} {x.shape}')
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
      raise InferError(f'{path}: has non-finite values')
    return (x[None] if x.ndim == 2 else x), {'ndim': x.ndim}
  if kind == 'png':
    from mrisr_jax.data.images import read_image
    x, info = read_image(path)
    return x[None], {'ndim': 2, 'bit_depth': 16 if info['bit_depth'] == 16 else 8}
  if kind == 'nii':
    from mrisr_jax.data import nifti
    img = nifti._load(path)
    shape, _ = nifti._stored_layout(img, path)
    vol = nifti._read_stored(img, path, (slice(None),) * 3, 'volume')
    if not np.all(np.isfinite(vol)):
      raise InferError(f'{path}: volume has non-finite values')
    hi = float(np.percentile(vol, NIFTI_PERCENTILE))
    if not hi > 0:
      raise InferError(f'{path}: the {NIFTI_PERCENTILE}th percentile is {hi:g}; expected a positive '
                       'intensity scale')
    stack = np.moveaxis(nifti.normalise(vol, 0.0, hi), 2, 0)   # (Z, X, Y)
    return np.ascontiguousarray(stack), {'ndim': 3, 'img': img, 'hi': hi}
  from mrisr_jax.data.fastmri import FastMRISliceSource
  src = FastMRISliceSource([path])
  try:
    vol = src.volumes[0]
    stack = np.stack([src.read_slice(0, s) for s in range(vol.num_slices)])
  finally:
    src.close()
  return np.clip(stack, 0.0, 1.0), {'ndim': 3, 'max': float(vol.metadata['max']),
                                    'target': vol.metadata['target'], 'attrs': vol.metadata['attrs']}


# ---------------------------------------------------------------------------------------- writing


def nifti_sr_affine(affine, scale: int):
  """The affine of a volume whose axes 0 and 1 are `scale` times finer, centres consistent.

  New voxel i' along a refined axis is old index (i' + 0.5) / s - 0.5, so the columns shrink by s
  and voxel (0, 0) sits at old index -0.5 + 0.5 / s.
  """
  import numpy as np
  a = np.array(affine, dtype=np.float64)
  out = a.copy()
  out[:3, :2] = a[:3, :2] / scale
  shift = -0.5 + 0.5 / scale
  out[:3, 3] = a[:3, :3] @ np.array([shift, shift, 0.0]) + a[:3, 3]
  return out


def _write_nifti(path: pathlib.Path, sr, info: dict, scale: int) -> None:
  import numpy as np
  img = info['img']
  data = (np.moveaxis(sr, 0, 2) * np.float32(info['hi'])).astype(np.float32)
  header = img.header.copy()
  header.set_data_dtype(np.float32)
  header.set_data_shape(data.shape)
  zooms = list(img.header.get_zooms())
  zooms[0], zooms[1] = zooms[0] / scale, zooms[1] / scale
  header.set_zooms(zooms[:3] + zooms[3:len(header.get_zooms())])
  header.set_slope_inter(1.0, 0.0)
  out = type(img)(data, None, header)
  sform, s_code = img.get_sform(coded=True)
  qform, q_code = img.get_qform(coded=True)
  out.set_sform(nifti_sr_affine(img.affine if sform is None else sform, scale), code=int(s_code or 0))
  out.set_qform(nifti_sr_affine(img.affine if qform is None else qform, scale), code=int(q_code or 0))
  import nibabel as nib
  _atomic(path, lambda tmp: nib.save(out, str(tmp)))


def _write(path: pathlib.Path, kind: str, sr, info: dict, record: dict) -> None:
  import numpy as np
  if kind == 'npy':
    arr = sr[0] if info['ndim'] == 2 else sr
    def save(tmp):
      with open(tmp, 'wb') as f:
        np.save(f, arr.astype(np.float32))
    _atomic(path, save)
  elif kind == 'png':
    from mrisr_jax.data.images import write_grey
    write_grey(path, sr[0], bit_depth=info.get('bit_depth', 8))
  elif kind == 'nii':
    _write_nifti(path, sr, info, record['scale'])
  else:
    import h5py

    def save(tmp):
      with h5py.File(tmp, 'w') as f:
        f.create_dataset('reconstruction_sr', data=(sr * np.float32(info['max'])).astype(np.float32))
        for k, v in info['attrs'].items():
          try:
            f.attrs[k] = v
          except (TypeError, ValueError):
            pass   # attributes h5py cannot store back as plain values are left out
        f.attrs['max'] = float(np.max(sr) * info['max'])
        f.attrs['sr_input_max'] = info['max']
        f.attrs['sr_target'] = info['target']
        for k in ('model', 'scale', 'weights', 'input', 'tile', 'overlap'):
          f.attrs[f'sr_{k}'] = record[k]
    _atomic(path, save)


# ---------------------------------------------------------------------------------------- driver


def infer(config, weights, input, output, *, tile: int = 0, overlap: int = 16, batch: int = 8,
          overwrite: bool = False) -> dict:
  """Reads `input`, super-resolves every slice, writes `output`; returns a summary record."""
  from mrisr_jax import registry, tiling
  from mrisr_jax.weights import load_generator_variables
  src, dst = pathlib.Path(input), pathlib.Path(output)
  in_kind, out_kind = _kind(src), _kind(dst)
  if in_kind is None:
    raise InferError(f'{src}: unknown input suffix; use .npy, .png, .nii, .nii.gz or .h5')
  if not src.is_file():
    raise InferError(f'{src}: no such input file')
  if out_kind not in OUTPUTS[in_kind]:
    raise InferError(f'{dst}: a {in_kind} input can be written as '
                     f'{" or ".join("." + k for k in OUTPUTS[in_kind])}, not {dst.name!r}')
  if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
    raise InferError(f'{dst}: is the input file; choose another output')
  if dst.exists() and not overwrite:
    raise InferError(f'{dst}: exists; pass --overwrite to replace it')
  model = registry.build_generator(config.model)
  variables = load_generator_variables(config, weights, model)
  lr, info = _read(src, in_kind)
  if out_kind == 'png' and info['ndim'] != 2:
    raise InferError(f'{dst}: a .png output needs a 2-D input; {src} holds {lr.shape[0]} slices')
  scale = config.model.scale
  start = time.perf_counter()
  sr = tiling.super_resolve(tiling.make_predict_fn(model, variables), lr, scale, model.size_multiple,
                            bool(getattr(model, 'upsampled_input', False)), tile=tile,
                            overlap=overlap, batch=batch)
  seconds = time.perf_counter() - start
  record = {'model': config.model.name, 'scale': scale, 'weights': str(weights), 'input': str(src),
            'output': str(dst), 'slices': int(lr.shape[0]), 'lr_shape': tuple(lr.shape[1:]),
            'sr_shape': tuple(sr.shape[1:]), 'tile': tile, 'overlap': overlap, 'seconds': seconds}
  dst.parent.mkdir(parents=True, exist_ok=True)
  _write(dst, out_kind, sr, info, record)
  return record


def summary_line(r: dict) -> str:
  (h, w), (hh, ww) = r['lr_shape'], r['sr_shape']
  tiles = f', {r["tile"]}-pixel tiles' if r['tile'] else ''
  return (f'wrote {r["output"]}: {r["slices"]} slice(s) {h}x{w} -> {hh}x{ww} '
          f'({r["model"]} x{r["scale"]}{tiles}) in {r["seconds"]:.1f} s')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from mrisr_jax import errors, tiling
  from mrisr_jax.weights import WeightsError
  f = flags.FLAGS
  try:
    record = infer(f.config, f.weights, f.input, f.output, tile=f.tile, overlap=f.overlap,
                   batch=f.batch, overwrite=f.overwrite)
  except (WeightsError, InferError, tiling.TilingError, ImportError) + errors.USER_ERRORS as e:
    errors.exit_with(e)
  print(summary_line(record))


if __name__ == '__main__':
  define_flags()
  app.run(main)
