"""Folders of 2-D images (the CASRGAN layout) as a slice source, and greyscale image I/O.

Layout of a split directory D (what the seed's downsample.py / tools/downsample.py write):
  D/HR/<name>.<ext>            ext in SUFFIXES; one image = one volume of one slice
  D/LR/x{s}/<name>x{s}.png     optional paired low-resolution image at scale s, either
                               (H/s, W/s) or, written with `downsample.py -k`, (H, W)

Reading (`read_image` / `read_grey`) always yields float32 (H, W) in [0, 1]:
  '1', 'L', 'P', 'LA', 'RGB', 'RGBA', ...   -> PIL `convert('L')`, / 255.  Colour becomes ITU-R 601
                                              luma L = (299 R + 587 G + 114 B) / 1000, rounded as
                                              PIL does (alpha is dropped, never composited);
                                              info 'colour'/'alpha' say what was lost
                                              (`infer` warns, naming the file)
  'I;16', 'I;16L', 'I;16B' (16-bit)          -> / 65535
  'I' (32-bit int, how PIL opens some        -> / 65535; values outside [0, 65535] are an error
       16-bit files)
  'F' (32-bit float)                         -> as stored; must already lie in [0, 1]
A 16-bit colour PNG reaches PIL as 8-bit RGB, so it is read at 8 bits.
"""

from __future__ import annotations

import pathlib

from absl import logging
import numpy as np
from PIL import Image

from mrisr_jax.data.errors import DataError, one_line
from mrisr_jax.data.slice_source import SliceSource, VolumeInfo

SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
HR_DIRNAME = 'HR'
LR_DIRNAME = 'LR'

_MODES_16BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')
_GREY_MODES = ('1', 'L', 'LA', 'La') + _MODES_16BIT + ('I', 'F')


def list_image_files(directory) -> list[pathlib.Path]:
  """Sorted image files (SUFFIXES, any case) directly in `directory`; hidden files are ignored.

  Raises:
    DataError: the directory is missing or holds no images.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise DataError(f'{directory}: no such image directory')
  files = sorted(
    p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith('.') and p.is_file()
  )
  if not files:
    raise DataError(f'{directory}: no images in the directory (looked for {" ".join(SUFFIXES)})')
  return files


def list_files(split_dir) -> list[pathlib.Path]:
  """Sorted HR images of a split directory: split_dir/HR/<name>.<ext>.

  Raises:
    DataError: naming split_dir/HR when it is missing or holds no images.
  """
  hr_dir = pathlib.Path(split_dir) / HR_DIRNAME
  if not hr_dir.is_dir():
    raise DataError(
      f'{hr_dir}: no HR image directory (an image-folder split holds '
      f'{HR_DIRNAME}/<name>.png and optionally {LR_DIRNAME}/x<s>/<name>x<s>.png)'
    )
  return list_image_files(hr_dir)


def lr_path_for(split_dir, hr_path, scale: int) -> pathlib.Path:
  """Where the seed's layout keeps the LR partner of `hr_path`: D/LR/x{s}/{name}x{s}.png."""
  s = int(scale)
  return pathlib.Path(split_dir) / LR_DIRNAME / f'x{s}' / f'{pathlib.Path(hr_path).stem}x{s}.png'


def read_image(path) -> tuple[np.ndarray, dict]:
  """(float32 (H, W) in [0, 1], info) of one image file; see the module docstring for the modes.

  info: 'mode' (PIL mode as stored), 'bit_depth' (1, 8, 16 or 32), 'size' ((W, H) as PIL reports
  it), 'colour' (True when greyscale conversion merged unequal colour channels) and 'alpha' (True
  when an alpha channel or transparency that is not fully opaque was dropped).

  Raises:
    DataError: '<path>: <problem>' for an unreadable, corrupt, truncated or multi-frame file, an
      unsupported mode, or values that do not fit [0, 1].
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as im:
      frames = getattr(im, 'n_frames', 1)
      if frames > 1:
        raise DataError(f'{path}: holds {frames} frames; an image folder needs one 2-D image per file')
      im.load()  # decode now: truncated or corrupt data fails here, not at training time
      mode = im.mode
      info = {'mode': mode, 'size': tuple(im.size), 'colour': False, 'alpha': False}
      if mode in _MODES_16BIT:
        x = np.asarray(im).astype(np.float64) / 65535.0
        info['bit_depth'] = 16
      elif mode == 'I':
        raw = np.asarray(im)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi > 65535:
          raise DataError(
            f'{path}: 32-bit integer image with values in [{lo}, {hi}]; only [0, 65535] (16-bit data) is supported'
          )
        x = raw.astype(np.float64) / 65535.0
        info['bit_depth'] = 16
      elif mode == 'F':
        x = np.asarray(im).astype(np.float64)
        if not np.all(np.isfinite(x)):
          raise DataError(f'{path}: float image has non-finite values')
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
          raise DataError(
            f'{path}: float image has values in [{lo:.4g}, {hi:.4g}]; float images must already be normalised to [0, 1]'
          )
        info['bit_depth'] = 32
      else:
        if mode not in _GREY_MODES:
          rgb = np.asarray(im.convert('RGB'))
          info['colour'] = bool(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))
        if 'A' in im.getbands() or 'a' in im.getbands() or 'transparency' in im.info:
          alpha = np.asarray(im.convert('RGBA'))[..., 3]
          info['alpha'] = bool(np.any(alpha != 255))
        x = np.asarray(im.convert('L')).astype(np.float64) / 255.0
        info['bit_depth'] = 1 if mode == '1' else 8
  except DataError:
    raise
  except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
    raise DataError(f'{path}: cannot read the image ({one_line(err)})') from None
  if x.ndim != 2 or x.size == 0:
    raise DataError(f'{path}: mode {mode} gives an array of shape {x.shape}, not a 2-D image')
  return x.astype(np.float32), info


def read_grey(path) -> np.ndarray:
  """float32 (H, W) in [0, 1] of one image file (colour -> ITU-R 601 luma, as PIL convert('L'))."""
  return read_image(path)[0]


def write_grey(path, image, bit_depth: int = 8) -> None:
  """Writes a [0, 1] greyscale image as an 8- or 16-bit file (format from the suffix).

  Values are scaled by 2**bit_depth - 1, rounded half to even (np.rint) and clamped, which is
  cv2's saturate_cast. The file appears atomically (`fileio.atomic_write`: written beside it, then
  renamed, mode 0o666 & ~umask), so an interrupted run never leaves a truncated image behind.

  Raises:
    ValueError: not 2-D, non-finite values, an unsupported bit depth or suffix.
  """
  path = pathlib.Path(path)
  x = np.asarray(image, dtype=np.float64)
  if x.ndim != 2 or x.size == 0:
    raise ValueError(f'write_grey: {path}: expected a non-empty (H, W) image, got shape {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'write_grey: {path}: image has non-finite values')
  if bit_depth == 8:
    dtype, maxval = np.uint8, 255.0
  elif bit_depth == 16:
    dtype, maxval = np.uint16, 65535.0
    if path.suffix.lower() not in ('.png', '.tif', '.tiff'):
      raise ValueError(f'write_grey: {path}: 16-bit images need a .png or .tif suffix')
  else:
    raise ValueError(f'write_grey: {path}: bit_depth must be 8 or 16, got {bit_depth!r}')
  fmt = Image.registered_extensions().get(path.suffix.lower())
  if fmt is None:
    raise ValueError(f'write_grey: {path}: unknown image suffix {path.suffix!r}')
  q = np.rint(np.clip(x, 0.0, 1.0) * maxval).astype(dtype)
  from mrisr_jax import fileio

  fileio.atomic_write(path, lambda tmp: Image.fromarray(q).save(tmp, format=fmt))


class ImageFolderSource(SliceSource):
  """split_dir/HR/*.png (...) as volumes of one slice, with the paired split_dir/LR/x{s} images.

  Args:
    split_dir: the directory holding HR/ (and LR/).
    scale: the SR factor; needed to find LR/x{scale}.
    lr_from_files: True: use LR/x{scale} (DataError when it is missing); 'auto': use it when it
      exists; False: ignore LR folders (the pipeline degrades HR on the fly).
    skip_bad_files: count bad images (and bad pairs) in `skipped` instead of raising.

  Elements: {'image', 'volume', 'slice': 0} plus 'lr' when `has_lr`. `lr_keepdims` tells whether
  the LR files are HR-sized (written with downsample.py -k, for models on a bicubic-upsampled
  input); None without LR.
  """

  format_name = 'images'

  def __init__(
    self,
    split_dir,
    *,
    scale: int | None = None,
    lr_from_files: str | bool = 'auto',
    skip_bad_files: bool = False,
    files=None,
    min_shape: tuple | None = None,
  ):
    """`files`: the HR images to use (default: all of split_dir/HR), e.g. after a split by volume."""
    self.split_dir = pathlib.Path(split_dir)
    if scale is not None:
      if isinstance(scale, bool) or int(scale) != scale or int(scale) < 1:
        raise ValueError(f'ImageFolderSource: scale must be a positive integer, got {scale!r}')
      scale = int(scale)
    self.scale = scale
    if isinstance(lr_from_files, str):
      if lr_from_files != 'auto':
        raise ValueError(f"ImageFolderSource: lr_from_files must be True, False or 'auto', got {lr_from_files!r}")
    else:
      lr_from_files = bool(lr_from_files)
    self.lr_dir: pathlib.Path | None = None
    if lr_from_files is True and scale is None:
      raise ValueError('ImageFolderSource: lr_from_files=True needs the scale to find LR/x<scale>')
    if scale is not None and lr_from_files is not False:
      lr_dir = self.split_dir / LR_DIRNAME / f'x{scale}'
      if lr_dir.is_dir():
        self.lr_dir = lr_dir
      elif lr_from_files is True:
        raise DataError(
          f'{lr_dir}: no paired LR directory for scale {scale} (lr_from_files=True); '
          'write it with tools/downsample.py or set lr_from_files to auto/False'
        )
      elif (self.split_dir / LR_DIRNAME).is_dir():
        # Likely a mistake worth seeing: LR files exist, but not for this scale.
        logging.warning(
          '%s: no x%d folder; making the LR images by the degradation pipeline', self.split_dir / LR_DIRNAME, scale
        )
    self.has_lr = self.lr_dir is not None
    super().__init__(
      list_files(self.split_dir) if files is None else files, skip_bad_files=skip_bad_files, min_shape=min_shape
    )
    self.lr_keepdims: bool | None = None
    if self.has_lr:
      self.lr_keepdims = self._common_keepdims()

  def inspect(self, path: pathlib.Path) -> VolumeInfo:
    hr, info = read_image(path)
    if not np.any(hr):
      raise DataError(f'{path}: has no signal (every pixel is 0)')
    h, w = hr.shape
    metadata = {'mode': info['mode'], 'bit_depth': info['bit_depth'], 'size': info['size']}
    if self.has_lr:
      metadata.update(self._inspect_lr(path, h, w))
    return VolumeInfo(path=path, name=path.stem, num_slices=1, shape=(h, w), metadata=metadata)

  def _inspect_lr(self, path: pathlib.Path, h: int, w: int) -> dict:
    s = self.scale
    lr_path = self.lr_dir / f'{path.stem}x{s}.png'
    if not lr_path.is_file():
      raise DataError(f'{lr_path}: the LR image paired with {path} is missing')
    lr, info = read_image(lr_path)
    if not np.any(lr):
      raise DataError(f'{lr_path}: has no signal (every pixel is 0)')
    if s > 1 and lr.shape == (h, w):
      keepdims = True
    elif h % s == 0 and w % s == 0 and lr.shape == (h // s, w // s):
      keepdims = False
    else:
      raise DataError(
        f'{path}: mismatched HR/LR pair at scale {s}: HR {path} is {h}x{w}, LR '
        f'{lr_path} is {lr.shape[0]}x{lr.shape[1]}; the LR must be (H/{s})x(W/{s}) '
        f'with HR sides divisible by {s}, or HR-sized (downsample.py -k)'
      )
    return {
      'lr_path': lr_path,
      'lr_keepdims': keepdims,
      'lr_shape': lr.shape,
      'lr_mode': info['mode'],
      'lr_bit_depth': info['bit_depth'],
    }

  def _common_keepdims(self) -> bool:
    """All pairs must be one kind: a model takes either (H/s, W/s) or HR-sized inputs."""
    first = {}
    for vol in self.volumes:
      first.setdefault(vol.metadata['lr_keepdims'], vol.metadata['lr_path'])
    if len(first) > 1:
      raise DataError(
        f'{self.lr_dir}: mixes HR-sized LR images (downsample.py -k; first: '
        f'{first[True]}) with 1/{self.scale}-sized ones (first: {first[False]}); '
        'rewrite the folder with one setting'
      )
    return next(iter(first))

  def read_slice(self, v: int, s: int) -> np.ndarray:
    return read_grey(self.volumes[v].path)

  def read_lr_slice(self, v: int, s: int) -> np.ndarray:
    if not self.has_lr:
      return super().read_lr_slice(v, s)
    meta = self.volumes[v].metadata
    lr = read_grey(meta['lr_path'])
    if lr.shape != tuple(meta['lr_shape']):
      raise DataError(
        f'{meta["lr_path"]}: LR image is now {lr.shape}, was {meta["lr_shape"]} when '
        'the source was built (the file changed)'
      )
    return lr

  def __repr__(self) -> str:
    lr = f', lr={self.lr_dir}' + (' (HR-sized)' if self.lr_keepdims else '') if self.has_lr else ''
    return f'{type(self).__name__}({len(self.volumes)} images{lr}, skipped={len(self.skipped)})'
