#!/usr/bin/env python
"""Writes the paired LR images of an HR image folder, as the CASRGAN seed's downsample.py does.

For every image HR/<name>.<ext> and scale s:
  1. (-b) Gaussian blur, sigma 1 (mrisr_jax.data.degrade.gaussian_blur);
  2. area shrink with the semantics of cv2.resize(img, None, fx=1/s, fy=1/s, INTER_AREA):
     output size round(H/s) x round(W/s), rounding half to even (cv2's saturate_cast<int> of
     size * (1/s)), and output pixel (i, j) the mean of the s x s block at (i*s, j*s); OpenCV
     crops the rows/columns beyond the last whole block, and where rounding goes up the last
     block is partial and averages only the pixels that exist;
  3. (-k) bicubic resize back to H x W (cv2 INTER_CUBIC, degrade.bicubic_resize);
  4. write <lr_dir>/x<s>/<name>x<s>.png at the input's bit depth (8-bit inputs -> 8-bit PNG;
     16-bit, 32-bit integer and float inputs -> 16-bit PNG).
As in the seed, where OpenCV works on 8-bit (16-bit) images, every intermediate image (blurred,
shrunk) is rounded to the output bit depth before the next step.

Everything is greyscale (the project's models take one channel): colour inputs are converted with
ITU-R 601 luma (PIL convert('L')). -g asks for that explicitly; without it the conversion still
happens and one warning line says so.

Differences from the seed's cv2 pipeline, all at most one grey level: cv2 rounds some 8-bit area
means half up and uses fixed-point bicubic weights; cv2.GaussianBlur truncates the kernel at 3
sigma for 8-bit images, degrade.gaussian_blur at 4 sigma.

Example (the seed's layout, D/HR -> D/LR/x2, x3, x4):
  python tools/downsample.py --hr_dir data/train/HR --lr_dir data/train/LR --scales 2 3 4
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from mrisr_jax.data import degrade  # noqa: E402
from mrisr_jax.data import images  # noqa: E402
from mrisr_jax.data.errors import DataError  # noqa: E402

PROG = 'downsample.py'
BLUR_SIGMA = 1.0


def lr_size(h: int, w: int, scale: int) -> tuple[int, int]:
  """(rows, cols) that cv2.resize(fx=fy=1/scale) produces: saturate_cast<int>(size * (1/scale)).

  saturate_cast<int>(double) is cvRound, which rounds half to even (as Python's round does):
  25 px at x2 -> 12, 27 px at x2 -> 14.
  """
  inv = 1.0 / scale
  return round(h * inv), round(w * inv)


def area_shrink(x: np.ndarray, scale: int) -> np.ndarray:
  """cv2.resize(x, None, fx=1/scale, fy=1/scale, interpolation=INTER_AREA) on a float (H, W) image.

  With fx given, OpenCV keeps the integer factor (it does not rescale it to the rounded output
  size), so it takes its 'area fast' path: means of scale x scale blocks from the top-left corner.
  This differs from resizing to the same output size with an explicit dsize (a fractional
  footprint, degrade.area_resize) whenever the size is not divisible by the scale.
  """
  h, w = x.shape
  oh, ow = lr_size(h, w, scale)
  if oh < 1 or ow < 1:
    raise ValueError(f'a {h}x{w} image is too small for scale {scale}')
  if oh * scale <= h and ow * scale <= w:
    # Whole blocks only: the leftover rows/columns are dropped, as OpenCV does.
    return degrade.area_resize(x[: oh * scale, : ow * scale], oh, ow)
  # Rounding went up: the last row/column of blocks overhangs the image; average what exists.
  ph, pw = oh * scale - h, ow * scale - w
  sums = np.pad(x, ((0, max(ph, 0)), (0, max(pw, 0))))[: oh * scale, : ow * scale]
  counts = np.pad(np.ones_like(x), ((0, max(ph, 0)), (0, max(pw, 0))))[: oh * scale, : ow * scale]
  sums = sums.reshape(oh, scale, ow, scale).sum(axis=(1, 3))
  counts = counts.reshape(oh, scale, ow, scale).sum(axis=(1, 3))
  return sums / counts


def quantize(x: np.ndarray, bit_depth: int) -> np.ndarray:
  """x rounded to the grey levels of a bit_depth image (as write_grey stores it), in [0, 1]."""
  maxval = float(2**bit_depth - 1)
  return np.rint(np.clip(x, 0.0, 1.0) * maxval) / maxval


def make_lr(
  hr: np.ndarray, scale: int, *, blurred: np.ndarray | None = None, keepdims: bool = False, bit_depth: int = 8
) -> np.ndarray:
  """The LR image downsample.py writes for `hr` (float in [0, 1]), quantised to bit_depth.

  `blurred`: the already blurred (and quantised) HR, when -b is on (shared by all scales).
  """
  src = hr if blurred is None else blurred
  lr = quantize(area_shrink(np.asarray(src, dtype=np.float64), scale), bit_depth)
  if keepdims:
    lr = quantize(degrade.bicubic_resize(lr, *hr.shape), bit_depth)
  return lr


def output_depth(info: dict) -> int:
  return 8 if info['bit_depth'] <= 8 else 16


def parse_args(argv):
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
    '--hr_dir',
    required=True,
    type=pathlib.Path,
    help=f'folder of HR images ({" ".join(images.SUFFIXES)}); never written to',
  )
  parser.add_argument(
    '--lr_dir',
    required=True,
    type=pathlib.Path,
    help='output folder; images go to LR_DIR/x<s>/<name>x<s>.png (the seed layout: D/HR -> D/LR)',
  )
  parser.add_argument(
    '--scales',
    type=int,
    nargs='+',
    default=[2, 3, 4],
    metavar='S',
    help='integer downscaling factors, each >= 2 (default: 2 3 4)',
  )
  parser.add_argument(
    '-g',
    '--grey',
    action='store_true',
    help='convert colour inputs to greyscale (ITU-R 601 luma) silently; without '
    'it they are converted anyway, with a warning',
  )
  parser.add_argument(
    '-b', '--blur', action='store_true', help=f'Gaussian blur (sigma {BLUR_SIGMA:g}) before shrinking'
  )
  parser.add_argument(
    '-k',
    '--keepdims',
    action='store_true',
    help='resize the LR image back to the HR size with bicubic '
    '(cv2 INTER_CUBIC), for models that take an upsampled input '
    '(SRCNN, DRRN)',
  )
  parser.add_argument(
    '--overwrite',
    action='store_true',
    help='replace existing LR files (by default an existing file is an error and nothing is written)',
  )
  args = parser.parse_args(argv)
  if any(s < 2 for s in args.scales):
    parser.error(f'--scales must be integers >= 2, got {" ".join(map(str, args.scales))}')
  args.scales = list(dict.fromkeys(args.scales))
  return args


def _inside(path: pathlib.Path, directory: pathlib.Path) -> bool:
  path, directory = path.resolve(), directory.resolve()
  return path == directory or directory in path.parents


def _error(message: str) -> int:
  print(f'{PROG}: error: {" ".join(str(message).split())}', file=sys.stderr)
  return 1


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    files = images.list_image_files(args.hr_dir)
  except DataError as err:
    return _error(err)
  stems = {}
  for path in files:
    if path.stem in stems:
      return _error(f'{path}: has the same name as {stems[path.stem]}; their LR files would collide')
    stems[path.stem] = path
  out_dirs = {s: args.lr_dir / f'x{s}' for s in args.scales}
  for out_dir in out_dirs.values():
    if _inside(out_dir, args.hr_dir):
      return _error(f'{out_dir}: is inside --hr_dir {args.hr_dir}; LR images must go elsewhere')
  if not args.overwrite:
    existing = [out_dirs[s] / f'{p.stem}x{s}.png' for p in files for s in args.scales]
    existing = [p for p in existing if p.exists()]
    if existing:
      more = f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''
      return _error(f'{existing[0]}: already exists{more}; pass --overwrite to replace')

  # Read everything once first, so a bad image stops the run before any file is written.
  colour = []
  for path in files:
    try:
      hr, info = images.read_image(path)
      h, w = hr.shape
      for s in args.scales:
        oh, ow = lr_size(h, w, s)
        if oh < 1 or ow < 1:
          raise DataError(f'{path}: a {h}x{w} image is too small for scale {s}')
      if args.blur and min(h, w) <= 4 * BLUR_SIGMA:
        raise DataError(f'{path}: a {h}x{w} image is too small to blur (sigma {BLUR_SIGMA:g})')
    except DataError as err:
      return _error(err)
    if info['colour']:
      colour.append((path, info['mode']))
  if colour and not args.grey:
    print(
      f'{PROG}: warning: {len(colour)} colour image(s) (first: {colour[0][0]}, mode '
      f'{colour[0][1]}) converted to greyscale with ITU-R 601 luma; -g does so silently',
      file=sys.stderr,
    )

  for out_dir in out_dirs.values():
    out_dir.mkdir(parents=True, exist_ok=True)
  for path in files:
    try:
      hr, info = images.read_image(path)
      depth = output_depth(info)
      blurred = None
      if args.blur:
        blurred = quantize(degrade.gaussian_blur(hr.astype(np.float64), BLUR_SIGMA), depth)
      for s in args.scales:
        lr = make_lr(hr, s, blurred=blurred, keepdims=args.keepdims, bit_depth=depth)
        images.write_grey(out_dirs[s] / f'{path.stem}x{s}.png', lr, depth)
    except (DataError, ValueError, OSError) as err:
      return _error(err if isinstance(err, DataError) else f'{path}: {err}')
  n, k = len(files), len(args.scales)
  steps = (['blur'] if args.blur else []) + ['area'] + (['bicubic to HR size'] if args.keepdims else [])
  print(
    f'{PROG}: wrote {n * k} LR images ({n} images x {k} scales: '
    f'{" ".join(f"x{s}" for s in args.scales)}; {" + ".join(steps)}) to {args.lr_dir}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
