"""Whole NIfTI volumes through a 2-D model, slice by slice, in bounded memory.

Geometry. The model works on 2-D planes of the stored array (no reorientation: the output keeps
the input's stored layout, orientation codes and sform/qform codes). Two modes follow from the
model's LR grid (`lr_factors` of the config's degradation):
  in-plane       factors (s, s): every plane across `slice_axis` (stored axis, default 2) is
                 super-resolved along its two axes;
  through-plane  factors (s, 1) or (1, s), a thick-slice model (SRCNN/DRRN trained with `thick:`):
                 planes that contain the thick axis (`thick_axis`, default the axis with the
                 largest voxel size) are super-resolved along it only.
A refined axis i gets n_i * f_i voxels of size zoom_i / f_i; new voxel j along it lies at old
index (j + 0.5) / f_i - 0.5, so the affine's column i shrinks by f_i and the origin moves by
(-0.5 + 0.5 / f_i) old voxels: voxel centres stay consistent with the input's.

Intensities (intensity-faithful: the output is in the input's units, nothing clipped). With p the
volume's 99.5th percentile (`hi`, computed from at most `PERCENTILE_SAMPLES` evenly strided
voxels, exact for volumes up to that size, after the file's scl_slope/scl_inter), each plane x
(float32) is split into the part the model can take and the rest:
    u = x / p,   c = clip(u, 0, 1),   SR = p * (model(c) + bicubic(u - c))
(`tiling.faithful_super_resolve`; bicubic = `degrade.bicubic_resize`, a = -0.75, the upsampling
evaluate's baseline uses). Voxels above p (the brightest 0.5 %) and negative voxels keep their
excess over [0, p], upsampled bicubically: they are neither flattened at p nor set to 0, and the
output differs from the bicubic upsampling of the input by p * (model(c) - bicubic(c)), at most
about p anywhere (for a bright region at 10 p, at most ~10 % and ~0 for a model that reproduces a
saturated region). Planes inside [0, p] are exactly p * model(x / p). Written as float32 with
scl_slope 1, scl_inter 0 (the input's scaling applied); cal_min/cal_max are kept from the input.

Affines. A singular (or non-finite) affine (the sform in use, or the qform when that is coded)
cannot place the refined grid: it is a one-line VolumeError naming the file.

Memory. Input `.nii` is read through nibabel's memory-mapped proxy a chunk of planes at a time;
`.nii.gz` is first decompressed, streamed, into a temporary `.nii` beside the output. The output
is written into a memory map of a temporary `.nii` whose pages are flushed and dropped after every
chunk, then (for `.nii.gz`) gzipped, streamed, and moved into place, so the resident memory is a
few chunks of planes, whatever the volume size (`tools/benchmark_infer.py` measures it). The
temporaries are tracked (`fileio.track_temporary`): an interrupted `infer` removes them
(`fileio.exit_on_signals`); the output gets mode 0o666 & ~umask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import mmap
import os
import pathlib
import secrets
import shutil
from typing import Callable

import numpy as np

from mrisr_jax import fileio
from mrisr_jax.data.errors import OneLineError

PERCENTILE = 99.5
PERCENTILE_SAMPLES = 1 << 24


class VolumeError(OneLineError):
  """One line naming the volume file or option at fault."""


def is_nifti(path) -> bool:
  name = pathlib.Path(path).name.lower()
  return name.endswith('.nii') or name.endswith('.nii.gz')


def sr_affine(affine, factors) -> np.ndarray:
  """The affine of a volume whose stored axis i is factors[i] times finer, voxel centres kept."""
  a = np.array(affine, dtype=np.float64)
  f = np.asarray(factors, dtype=np.float64)
  out = a.copy()
  out[:3, :3] = a[:3, :3] / f[None, :]
  out[:3, 3] = a[:3, :3] @ (-0.5 + 0.5 / f) + a[:3, 3]
  return out


@dataclasses.dataclass(frozen=True)
class Plan:
  """How a volume is cut into planes: iterate over `axis`; a plane's rows/cols are stored axes
  `rows`, `cols`; stored axis i grows by `factors[i]`."""

  axis: int
  rows: int
  cols: int
  factors: tuple[int, int, int]
  mode: str  # 'in-plane' | 'through-plane'


def plan_volume(
  path, shape, zooms, lr_factors: tuple[int, int], slice_axis: int | None = None, thick_axis: int | None = None
) -> Plan:
  """The Plan for a model whose 2-D LR grid is `lr_factors` (fy, fx); see the module docstring."""
  fy, fx = (int(f) for f in lr_factors)
  for name, ax in (('slice_axis', slice_axis), ('thick_axis', thick_axis)):
    if ax is not None and ax not in (0, 1, 2):
      raise VolumeError(f'{path}: {name} {ax} must be 0, 1 or 2 (a stored axis)')
  if fy == fx:
    if thick_axis is not None:
      raise VolumeError(
        f'{path}: --thick_axis needs a through-plane (thick-slice) model; this config '
        f'refines both in-plane axes by {fy}'
      )
    axis = 2 if slice_axis is None else slice_axis
    rows, cols = (a for a in range(3) if a != axis)
    factors = [fy, fy, fy]
    factors[axis] = 1
    return Plan(axis, rows, cols, tuple(factors), 'in-plane')
  if min(fy, fx) != 1:
    raise VolumeError(
      f'{path}: LR factors {(fy, fx)} refine both axes by different amounts; '
      'only (s, s), (s, 1) and (1, s) are supported'
    )
  s = max(fy, fx)
  if thick_axis is None:
    z = np.asarray(zooms, dtype=np.float64)
    order = np.argsort(-z, kind='stable')
    if np.isclose(z[order[0]], z[order[1]]):
      raise VolumeError(
        f'{path}: voxel sizes {tuple(float(v) for v in z)} have no single thickest '
        'axis; pass --thick_axis (the stored axis with thick slices)'
      )
    thick_axis = int(order[0])
  if slice_axis is None:
    slice_axis = max(a for a in range(3) if a != thick_axis)
  if slice_axis == thick_axis:
    raise VolumeError(
      f'{path}: slice_axis and thick_axis are both {thick_axis}; through-plane planes must contain the thick axis'
    )
  other = 3 - slice_axis - thick_axis
  rows, cols = (thick_axis, other) if fy == s else (other, thick_axis)
  factors = [1, 1, 1]
  factors[thick_axis] = s
  return Plan(slice_axis, rows, cols, tuple(factors), 'through-plane')


@contextlib.contextmanager
def open_uncompressed(path, workdir):
  """The NIfTI image of `path`, memory-mappable: a .nii.gz is decompressed into `workdir` first."""
  import nibabel as nib

  path = pathlib.Path(path)
  tmp = None
  try:
    if path.name.lower().endswith('.gz'):
      fd, tmp = _create_temporary(pathlib.Path(workdir), '.decompressed.')
      try:
        with os.fdopen(fd, 'wb') as out, gzip.open(path, 'rb') as src:
          shutil.copyfileobj(src, out, 1 << 22)
      except (OSError, EOFError) as e:
        raise VolumeError(f'{path}: cannot decompress ({e})') from None
      source = tmp
    else:
      source = path
    try:
      img = nib.load(str(source), mmap=True)
    except Exception as e:  # nibabel raises many types for bad files
      raise VolumeError(f'{path}: cannot read as NIfTI ({e})') from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
      raise VolumeError(f'{path}: is a {type(img).__name__}, not a NIfTI image')
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]) or min(shape[:3]) < 1:
      raise VolumeError(f'{path}: has shape {shape}; expected a 3-D volume')
    if img.get_data_dtype().kind not in 'biuf':
      raise VolumeError(f'{path}: has data type {img.get_data_dtype()}; expected real magnitudes')
    check_affine(img, path)
    yield img
  finally:
    if tmp is not None:
      if tmp.exists():
        tmp.unlink()
      fileio.forget_temporary(tmp)


def _create_temporary(folder: pathlib.Path, prefix: str) -> tuple[int, pathlib.Path]:
  """(fd, path) of a new hidden `prefix`<random>.nii in `folder`, opened for writing, mode
  0o666 & ~umask (mkstemp's 0600 would stick to an output moved into place), and tracked."""
  for _ in range(100):
    tmp = folder / f'{prefix}{secrets.token_hex(6)}.nii'
    fileio.track_temporary(tmp)
    try:
      return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), tmp
    except FileExistsError:
      fileio.forget_temporary(tmp)
  raise VolumeError(f'{folder}: cannot create a temporary file')


def check_affine(img, path) -> None:
  """VolumeError naming the file when an affine the output needs is singular or non-finite."""
  affines = []
  sform, s_code = img.get_sform(coded=True)
  qform, q_code = img.get_qform(coded=True)
  if s_code:
    affines.append((f'sform (sform_code {int(s_code)})', sform))
  if q_code:
    affines.append((f'qform (qform_code {int(q_code)})', qform))
  for name, a in affines + [('affine', img.affine)]:
    m = np.asarray(a, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(a)) or np.linalg.matrix_rank(m) < 3:
      raise VolumeError(
        f'{path}: has a singular {name} {np.round(np.asarray(a, np.float64), 4).tolist()} (its voxel axes do not '
        'span 3-D space), so the super-resolved grid cannot be placed; fix the header (e.g. nibabel set_sform/'
        'set_qform with the scanner geometry)'
      )


def read_planes(img, path, axis: int, start: int, stop: int) -> np.ndarray:
  """float32 stored data [start, stop) along `axis`, scaling applied, extra singleton dims dropped."""
  slicer = [slice(None)] * 3
  slicer[axis] = slice(start, stop)
  slicer += [0] * (len(img.shape) - 3)
  try:
    block = np.asarray(img.dataobj[tuple(slicer)], dtype=np.float32)
  except Exception as e:  # truncated files, short memmaps
    raise VolumeError(f'{path}: cannot read voxels {start}:{stop} along axis {axis} ({e})') from None
  if not np.all(np.isfinite(block)):
    raise VolumeError(f'{path}: has non-finite voxels in {start}:{stop} along axis {axis}')
  return block


def intensity_scale(img, path, chunk: int = 16) -> float:
  """The PERCENTILE-th percentile of the volume, from at most PERCENTILE_SAMPLES strided voxels."""
  shape = img.shape[:3]
  stride = max(1, -(-int(np.prod(shape)) // PERCENTILE_SAMPLES))
  samples, offset = [], 0
  for start in range(0, shape[2], chunk):  # axis 2 is contiguous on disk (Fortran order)
    flat = read_planes(img, path, 2, start, min(shape[2], start + chunk)).ravel(order='F')
    samples.append(flat[(-offset) % stride :: stride])
    offset += flat.size
  hi = float(np.percentile(np.concatenate(samples), PERCENTILE))
  if not hi > 0:
    raise VolumeError(f'{path}: the {PERCENTILE}th percentile is {hi:g}; expected a positive intensity scale')
  return hi


class StreamWriter:
  """A float32 NIfTI written plane chunk by plane chunk through a memory map of a temporary file.

  `close()` moves the finished file into place (gzipping it for .nii.gz); `abort()` (or an
  exception inside the `with`) removes the temporary files and leaves `path` untouched.
  """

  def __init__(self, path, header, shape):
    self.path = pathlib.Path(path)
    self.shape = tuple(int(n) for n in shape)
    header.set_data_dtype(np.float32)
    header.set_data_shape(self.shape)
    header.set_slope_inter(1.0, 0.0)
    header.set_data_offset(0)  # write_to sets the smallest legal offset
    fd, self.tmp = _create_temporary(self.path.parent, f'.{self.path.name}.')
    self._file = os.fdopen(fd, 'w+b')
    header.write_to(self._file)
    offset = int(header.get_data_offset())
    nbytes = offset + 4 * int(np.prod(self.shape))
    self._file.truncate(nbytes)
    self._map = mmap.mmap(self._file.fileno(), nbytes)
    if hasattr(mmap, 'MADV_RANDOM'):
      # writes across axes 0/1 touch a few bytes every plane; without this, readahead faults in
      # most of the file on each chunk (measured: the whole output resident, and 3.7x slower)
      self._map.madvise(mmap.MADV_RANDOM)
    dtype = np.dtype(np.float32).newbyteorder(header.endianness)
    self.array = np.ndarray(self.shape, dtype, buffer=self._map, offset=offset, order='F')

  def write(self, axis: int, start: int, block: np.ndarray) -> None:
    slicer = [slice(None)] * 3
    slicer[axis] = slice(start, start + block.shape[axis])
    self.array[tuple(slicer)] = block
    # written pages go to the file now and leave this process's resident memory
    self._map.flush()
    if hasattr(mmap, 'MADV_DONTNEED'):
      self._map.madvise(mmap.MADV_DONTNEED)

  def _release(self) -> None:
    self.array = None
    if self._map is not None:
      self._map.close()
      self._map = None
    if not self._file.closed:
      self._file.close()

  def close(self) -> None:
    self._release()
    try:
      if self.path.name.lower().endswith('.gz'):

        def compress(gz):
          with (
            open(gz, 'wb') as raw,
            gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=1) as out,
            open(self.tmp, 'rb') as src,
          ):
            shutil.copyfileobj(src, out, 1 << 22)

        fileio.atomic_write(self.path, compress)
      else:  # the finished memory-mapped temp file is the output: one rename puts it in place
        os.chmod(self.tmp, fileio.new_file_mode())
        os.replace(self.tmp, self.path)
    finally:
      self.abort()

  def abort(self) -> None:
    self._release()
    if self.tmp.exists():
      self.tmp.unlink()
    fileio.forget_temporary(self.tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self.abort()


def sr_header(img, plan: Plan, shape, path='the volume'):
  """The input's header for the refined grid: zooms / factors, sform/qform (with codes) moved."""
  header = img.header.copy()
  zooms = list(header.get_zooms())
  for i in range(3):
    zooms[i] = zooms[i] / plan.factors[i]
  header.set_data_shape(shape)
  header.set_zooms(zooms[: len(header.get_zooms())])
  sform, s_code = img.get_sform(coded=True)
  qform, q_code = img.get_qform(coded=True)
  try:
    header.set_sform(sr_affine(img.affine if sform is None else sform, plan.factors), code=int(s_code or 0))
    header.set_qform(sr_affine(img.affine if qform is None else qform, plan.factors), code=int(q_code or 0))
  except Exception as e:  # nibabel's HeaderDataError (an affine it cannot decompose), LinAlgError
    raise VolumeError(f'{path}: cannot write the refined affine ({e})') from None
  return header


def super_resolve_volume(
  src,
  dst,
  sr_stack: Callable[[np.ndarray], np.ndarray],
  lr_factors: tuple[int, int],
  *,
  slice_axis: int | None = None,
  thick_axis: int | None = None,
  chunk: int = 8,
  progress: bool = True,
) -> dict:
  """Super-resolves the NIfTI `src` into `dst` (.nii or .nii.gz) plane chunk by plane chunk.

  sr_stack: (n, a, b) float32 in [0, 1] -> (n, a * f_rows, b * f_cols) in [0, 1] (the model);
  it sees clip(planes / hi, 0, 1) and the rest is added back bicubically (module docstring).
  Returns {'mode', 'axis', 'factors', 'shape', 'zooms', 'hi', 'below', 'above'} (below/above: the
  fraction of voxels under 0 / over hi, whose excess took the bicubic path).
  """
  from mrisr_jax.tiling import faithful_super_resolve

  from tqdm import tqdm

  src, dst = pathlib.Path(src), pathlib.Path(dst)
  with open_uncompressed(src, dst.parent) as img:
    shape = tuple(int(n) for n in img.shape[:3])
    plan = plan_volume(src, shape, img.header.get_zooms()[:3], lr_factors, slice_axis, thick_axis)
    hi = intensity_scale(img, src)
    out_shape = tuple(n * f for n, f in zip(shape, plan.factors))
    header = sr_header(img, plan, out_shape, src)
    order = (plan.axis, plan.rows, plan.cols)  # stored axes -> (plane, row, col)
    back = tuple(np.argsort(order))
    n = shape[plan.axis]
    plane_factors = (plan.factors[plan.rows], plan.factors[plan.cols])
    below = above = 0

    def model(c):
      sr = sr_stack(c)
      want = (c.shape[0], c.shape[1] * plane_factors[0], c.shape[2] * plane_factors[1])
      if np.shape(sr) != want:  # a wrong shape would leave silent zeros in the output
        raise VolumeError(f'{src}: the model returned planes of shape {np.shape(sr)}, expected {want}')
      return sr

    with (
      StreamWriter(dst, header, out_shape) as writer,
      tqdm(total=n, desc=f'{src.name} ({plan.mode})', unit='plane', disable=not progress, leave=False) as bar,
    ):
      for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        stack = np.transpose(read_planes(img, src, plan.axis, start, stop), order)
        below += int(np.count_nonzero(stack < 0))
        above += int(np.count_nonzero(stack > np.float32(hi)))
        sr = faithful_super_resolve(model, stack, hi, plane_factors)
        writer.write(plan.axis, start, np.transpose(sr, back))
        bar.update(stop - start)
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
  size = float(np.prod(shape))
  return {
    'mode': plan.mode,
    'axis': plan.axis,
    'factors': plan.factors,
    'shape': out_shape,
    'zooms': zooms,
    'hi': hi,
    'below': below / size,
    'above': above / size,
  }
