"""Writing HDF5 volumes in the real fastMRI layout, so that fastMRI's own `SliceDataset` reads them.

fastMRI (https://github.com/facebookresearch/fastMRI, fastmri/data/mri_data.py) reads, per file:
  kspace               complex64 (S, H, W) single-coil or (S, C, H, W) multi-coil; num_slices is
                       kspace.shape[0], so every file needs it
  reconstruction_esc   float32 (S, h, w): the target of challenge='singlecoil'
  reconstruction_rss   float32 (S, h, w): the target of challenge='multicoil'
  ismrmrd_header       scalar bytes: ISMRMRD XML (namespace http://www.ismrm.org/ISMRMRD); SliceDataset
                       fails with KeyError without it. It reads encoding/encodedSpace/matrixSize x, y, z
                       (enc_size), encoding/reconSpace/matrixSize x, y, z (recon_size: the target is the
                       image centre-cropped to (recon x, recon y)) and
                       encoding/encodingLimits/kspace_encoding_step_1 center and maximum, from which
                         padding_left = enc_y // 2 - center,  padding_right = padding_left + maximum + 1
                       (the sampled k-space columns; a fully sampled (H, W) k-space has 0 and W)
  attrs                max (the target volume's maximum), norm (its L2 norm), acquisition, patient_id;
                       all of them are handed to fastMRI's transforms

API (used by tools/make_sample_data.py, tools/benchmark_data.py and the tests):

  ismrmrd_header_xml(enc_hw, recon_hw=None, *, voxel_mm=(1.0, 1.0, 1.0), num_coils=1,
                     center=None, maximum=None) -> bytes
      The XML for an (H, W) = enc_hw k-space (x = H readout, y = W phase encoding), a recon_hw
      (default enc_hw) target, voxel_mm (x, y, z) millimetres per pixel (fieldOfView_mm = matrix size
      * voxel size) and num_coils receiver channels. center/maximum of kspace_encoding_step_1
      default to a fully sampled k-space: center = W // 2, maximum = W - 1 (padding 0 and W).
      Also written, as the ISMRMRD schema asks: receiverChannels, H1resonanceFrequency_Hz 0 (not
      known), the step_2 and slice limits (0) and trajectory 'cartesian'.

  write_volume(path, *, kspace=None, target=None, challenge='singlecoil', attrs=None, header='auto',
               recon_hw=None, voxel_mm=(1.0, 1.0, 1.0), write_target=True, gzip=None) -> pathlib.Path
      One volume file; returns `path` (parent folders are created, an existing file replaced).
        kspace     complex (S, H, W) for 'singlecoil', (S, C, H, W) for 'multicoil'; stored complex64.
                   None: computed from `target` (fastMRI's fft2c; multi-coil as one coil), so that
                   |ifft2c(kspace)| (RSS over coils) is the target again.
        target     real (S, h, w), stored float32 as reconstruction_esc ('singlecoil') or
                   reconstruction_rss ('multicoil'). None: computed from kspace as fastMRI's reference
                   does (|ifft2c| per coil, root-sum-of-squares, centre crop to recon_hw, default the
                   whole image). write_target=False leaves it out (the layout of fastMRI's test sets;
                   the header still says recon_hw).
        recon_hw   the header's recon matrix (h, w), to which fastMRI crops the image. Default: the
                   target's (h, w); with a target given, recon_hw may only repeat that.
        header     'auto': ismrmrd_header_xml(kspace (H, W), target (h, w), voxel_mm, coils);
                   bytes/str: stored as given (a test's broken header); None: no header (which fastMRI
                   cannot read: for tests of that error only).
        attrs      file attributes; `max` and `norm` default to those of the target (float64), every
                   other key is the caller's (fastMRI files carry acquisition and patient_id).
        gzip       None: uncompressed, contiguous. An int level: gzip at that level, one chunk per
                   slice, the target byte-shuffled.
      Object timestamps are off (track_times=False), so the same arguments give the same bytes.
      Raises ValueError for a challenge other than the two, a k-space of the wrong rank for it, a
      non-complex k-space, a target not of rank 3, slice counts that differ, a recon_hw that differs
      from the target's (h, w) or does not fit in the k-space's (H, W), or neither array given.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import h5py
import numpy as np

from mrisr_jax.data.fastmri import HEADER_KEY, ISMRMRD_NAMESPACE, KSPACE_KEY, fft2c, rss_from_kspace

__all__ = ['CHALLENGES', 'TARGET_KEY', 'ismrmrd_header_xml', 'write_volume']

CHALLENGES = ('singlecoil', 'multicoil')
TARGET_KEY = {'singlecoil': 'reconstruction_esc', 'multicoil': 'reconstruction_rss'}  # as SliceDataset
KSPACE_RANK = {'singlecoil': 3, 'multicoil': 4}


def _xyz(tag: str, values) -> str:
  return f'<{tag}>' + ''.join(f'<{a}>{v}</{a}>' for a, v in zip('xyz', values)) + f'</{tag}>'


def _number(v: float) -> str:
  return format(float(v), '.10g')


def _limit(tag: str, maximum: int, center: int, minimum: int = 0) -> str:
  return f'<{tag}><minimum>{minimum}</minimum><maximum>{maximum}</maximum><center>{center}</center></{tag}>'


def ismrmrd_header_xml(
  enc_hw,
  recon_hw=None,
  *,
  voxel_mm=(1.0, 1.0, 1.0),
  num_coils: int = 1,
  center: int | None = None,
  maximum: int | None = None,
) -> bytes:
  """ISMRMRD XML with what fastMRI's SliceDataset reads (see the module docstring), UTF-8 bytes."""
  enc_h, enc_w = (int(n) for n in enc_hw)
  rec_h, rec_w = (int(n) for n in (enc_hw if recon_hw is None else recon_hw))
  if min(enc_h, enc_w, rec_h, rec_w, int(num_coils)) < 1:
    raise ValueError(f'sizes must be >= 1: enc {enc_hw}, recon {recon_hw}, coils {num_coils}')
  center = enc_w // 2 if center is None else int(center)
  maximum = enc_w - 1 if maximum is None else int(maximum)
  vx, vy, vz = (float(v) for v in voxel_mm)
  enc, rec = (enc_h, enc_w, 1), (rec_h, rec_w, 1)
  lines = [
    '<?xml version="1.0" encoding="utf-8"?>',
    f'<ismrmrdHeader xmlns="{ISMRMRD_NAMESPACE}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    f' xsi:schemaLocation="{ISMRMRD_NAMESPACE} ismrmrd.xsd">',
    f'  <acquisitionSystemInformation><receiverChannels>{int(num_coils)}</receiverChannels>'
    '</acquisitionSystemInformation>',
    '  <experimentalConditions><H1resonanceFrequency_Hz>0</H1resonanceFrequency_Hz></experimentalConditions>',
    '  <encoding>',
    '    <encodedSpace>'
    + _xyz('matrixSize', enc)
    + _xyz('fieldOfView_mm', (_number(enc_h * vx), _number(enc_w * vy), _number(vz)))
    + '</encodedSpace>',
    '    <reconSpace>'
    + _xyz('matrixSize', rec)
    + _xyz('fieldOfView_mm', (_number(rec_h * vx), _number(rec_w * vy), _number(vz)))
    + '</reconSpace>',
    '    <encodingLimits>'
    + _limit('kspace_encoding_step_1', maximum, center)
    + _limit('kspace_encoding_step_2', 0, 0)
    + _limit('slice', 0, 0)
    + '</encodingLimits>',
    '    <trajectory>cartesian</trajectory>',
    '  </encoding>',
    '</ismrmrdHeader>',
    '',
  ]
  return '\n'.join(lines).encode('utf-8')


def write_volume(
  path,
  *,
  kspace: np.ndarray | None = None,
  target: np.ndarray | None = None,
  challenge: str = 'singlecoil',
  attrs: Mapping[str, Any] | None = None,
  header: bytes | str | None = 'auto',
  recon_hw=None,
  voxel_mm=(1.0, 1.0, 1.0),
  write_target: bool = True,
  gzip: int | None = None,
) -> pathlib.Path:
  """One fastMRI-layout volume file (see the module docstring); returns `path`."""
  if challenge not in CHALLENGES:
    raise ValueError(f'challenge {challenge!r} is not one of {list(CHALLENGES)}')
  if kspace is None and target is None:
    raise ValueError('write_volume needs kspace, target or both')
  rank = KSPACE_RANK[challenge]
  if target is not None:
    target = np.asarray(target)
    if target.ndim != 3:
      raise ValueError(f'target has shape {target.shape}; expected (slices, h, w)')
    if target.dtype.kind not in 'fiu':
      raise ValueError(f'target has dtype {target.dtype}; expected real magnitudes')
    target = target.astype(np.float32, copy=False)
  if kspace is None:
    kspace = fft2c(target.astype(np.float64)).astype(np.complex64)
    if challenge == 'multicoil':
      kspace = kspace[:, None]
  kspace = np.asarray(kspace)
  if kspace.ndim != rank or kspace.dtype.kind != 'c':
    raise ValueError(
      f'kspace has shape {kspace.shape} and dtype {kspace.dtype}; {challenge} expects complex '
      + ('(slices, H, W)' if rank == 3 else '(slices, coils, H, W)')
    )
  kspace = kspace.astype(np.complex64, copy=False)
  if recon_hw is not None:
    recon_hw = tuple(int(n) for n in recon_hw)
    if target is not None and recon_hw != target.shape[-2:]:
      raise ValueError(f'recon_hw {recon_hw} differs from the target (h, w) {target.shape[-2:]}')
  if target is None:
    crop = recon_hw or tuple(kspace.shape[-2:])
    if not (0 < crop[0] <= kspace.shape[-2] and 0 < crop[1] <= kspace.shape[-1]):
      raise ValueError(f'recon_hw {crop} does not fit in the k-space (H, W) {kspace.shape[-2:]}')
    target = rss_from_kspace(kspace.astype(np.complex128), crop).astype(np.float32)  # in double precision
  if target.shape[0] != kspace.shape[0]:
    raise ValueError(f'target has {target.shape[0]} slices, kspace {kspace.shape[0]}')
  if isinstance(header, str) and header == 'auto':
    num_coils = kspace.shape[1] if rank == 4 else 1
    header = ismrmrd_header_xml(kspace.shape[-2:], target.shape[-2:], voxel_mm=voxel_mm, num_coils=num_coils)

  values = {'max': float(target.max()), 'norm': float(np.linalg.norm(target.astype(np.float64)))}
  values.update(attrs or {})

  def options(data: np.ndarray, shuffle: bool) -> dict:
    if gzip is None:
      return {}
    return {'chunks': (1,) + data.shape[1:], 'compression': 'gzip', 'compression_opts': int(gzip), 'shuffle': shuffle}

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, 'w') as f:
    f.create_dataset(KSPACE_KEY, data=kspace, track_times=False, **options(kspace, False))
    if write_target:
      f.create_dataset(TARGET_KEY[challenge], data=target, track_times=False, **options(target, True))
    if header is not None:
      raw = header.encode('utf-8') if isinstance(header, str) else bytes(header)
      f.create_dataset(HEADER_KEY, data=raw, dtype=h5py.string_dtype('utf-8'), track_times=False)
    for key, value in values.items():
      f.attrs[key] = value
  return path
