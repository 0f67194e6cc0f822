"""Comparison images and evaluation reports (numpy + pillow; every file written atomically).

* :func:`to_uint8` / :func:`apply_colormap` — display conversions.
* :func:`image_grid` — one row ``LR | bicubic | SR | HR | |SR-HR|`` with captions, and
  optionally a second row with an enlarged region of every panel; panels enlarged for display
  to at least :data:`MIN_PANEL` pixels, captions wrapped to fit, slices of RAS volumes shown
  in radiological orientation (:func:`orient_for_display`, the one orientation helper).
* :func:`grid_layout` — where :func:`image_grid` puts things (shape, panel origins).
* :func:`save_png` — write an image array as PNG.
* :func:`write_report` — ``report.md``, ``report.html`` and ``metrics.json`` for an
  evaluation run.
* :func:`link_report` — list a report in a training workdir's ``index.html``.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mrisr_jax import fileio

__all__ = [
  'GAP',
  'MIN_PANEL',
  'ORIENTATIONS',
  'GridLayout',
  'apply_colormap',
  'box_width',
  'caption_font',
  'display_factor',
  'grid_layout',
  'image_grid',
  'orient_for_display',
  'slice_orientation',
  'wrap_caption',
  'save_png',
  'to_uint8',
  'link_report',
  'replace_section',
  'to_jsonable',
  'write_report',
]

#: Pixels of background between neighbouring panels and between the two rows.
GAP = 2
#: Panels are enlarged for display (nearest neighbour, an integer factor) until their short side
#: is at least this many pixels, so a small volume's figure stays readable.
MIN_PANEL = 256
#: Caption font size (PIL's default font, scalable where Pillow has FreeType) and its margin.
FONT_SIZE = 14
CAPTION_PAD = 3
BACKGROUND = (0, 0, 0)
CAPTION_COLOR = (255, 255, 255)
BOX_COLOR = (0, 255, 128)
#: 'stored': a slice shown as its array is laid out (fastMRI, images, .npy: already in display
#: orientation); 'ras': a slice of a volume reoriented to RAS (NIfTI, as the data layer reads it),
#: shown in radiological orientation by :func:`orient_for_display`.
ORIENTATIONS = ('stored', 'ras')
DEFAULT_LABELS = ('LR (nearest)', 'Bicubic', 'SR', 'HR')

# Anchor colours of a magma-like ramp (black -> purple -> orange -> pale yellow).
_MAGMA_ANCHORS = np.array(
  [
    (0, 0, 4),
    (28, 16, 68),
    (79, 18, 123),
    (129, 37, 129),
    (181, 54, 122),
    (229, 80, 100),
    (251, 135, 97),
    (254, 194, 135),
    (252, 253, 191),
  ],
  dtype=np.float64,
)


# ---------------------------------------------------------------------------------------
# display conversions
# ---------------------------------------------------------------------------------------


def to_uint8(img, vmax: float | None = None) -> np.ndarray:
  """Map ``img`` to uint8: ``round(clip(img, 0, v) / v * 255)`` with ``v = vmax or 1``.

  NaNs become 0. The shape is unchanged.
  """
  v = 1.0 if vmax is None else float(vmax)
  if not v > 0:
    raise ValueError(f'vmax must be > 0, got {vmax}')
  x = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=v, neginf=0.0)
  return np.round(np.clip(x, 0.0, v) / v * 255.0).astype(np.uint8)


def apply_colormap(values, vmax: float) -> np.ndarray:
  """Colour ``values`` with a magma-like ramp: 0 -> near black, ``vmax`` -> pale yellow.

  Values are clipped to ``[0, vmax]``; the result is uint8 with a trailing RGB axis.
  """
  vmax = float(vmax)
  if not vmax > 0:
    raise ValueError(f'vmax must be > 0, got {vmax}')
  t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)) / vmax, 0.0, 1.0)
  xp = np.linspace(0.0, 1.0, len(_MAGMA_ANCHORS))
  rgb = np.stack([np.interp(t, xp, _MAGMA_ANCHORS[:, c]) for c in range(3)], axis=-1)
  return np.round(rgb).astype(np.uint8)


def _gray_rgb(img_u8: np.ndarray) -> np.ndarray:
  return np.repeat(img_u8[..., None], 3, axis=-1)


def _upsample_nearest(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize: ``out[i, j] = img[i * h // H, j * w // W]``.

  For an integer factor this equals ``np.repeat`` along both axes.
  """
  h, w = img.shape
  rows = (np.arange(shape[0]) * h) // shape[0]
  cols = (np.arange(shape[1]) * w) // shape[1]
  return img[rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------------------
# display orientation
# ---------------------------------------------------------------------------------------


def slice_orientation(data_format: str | None) -> str:
  """The :data:`ORIENTATIONS` entry of slices read from ``data_format`` (``'nifti'``,
  ``'fastmri'``, ``'npy'``, ``'image'``/``'images'``, as ``mrisr_jax.data.splits`` names them):
  NIfTI slices come from a volume reoriented to RAS (``'ras'``); the others are stored as shown."""
  return 'ras' if data_format == 'nifti' else 'stored'


def orient_for_display(img, orientation: str = 'stored') -> np.ndarray:
  """A slice ``(H, W[, C])`` as it is to be shown: the one orientation helper of every figure.

  ``'stored'``: unchanged. ``'ras'``: a slice of a RAS volume (array axes toward the subject's
  Right, Anterior, Superior; the slice keeps two of them in that order) in radiological
  orientation: transposed and flipped both ways, ``img.T[::-1, ::-1]``, so the top of the image
  is anterior (axial slices) or superior (coronal, sagittal), the subject's right is on the
  viewer's left (axial, coronal) and anterior is on the left (sagittal). The result is ``(W, H[, C])``.
  """
  if orientation not in ORIENTATIONS:
    raise ValueError(f'orientation {orientation!r}: use one of {", ".join(ORIENTATIONS)}')
  a = np.asarray(img)
  if orientation == 'stored':
    return a
  return np.swapaxes(a, 0, 1)[::-1, ::-1]


def _orient_region(region, shape, orientation: str) -> tuple[int, int, int, int]:
  """(y, x, h, w) of a stored ``shape`` slice's region in :func:`orient_for_display` coordinates."""
  y, x, h, w = region
  if orientation == 'stored':
    return y, x, h, w
  H, W = shape
  return W - x - w, H - y - h, w, h


def display_factor(shape) -> int:
  """The integer enlargement that brings a panel's short side to at least :data:`MIN_PANEL`."""
  return max(1, math.ceil(MIN_PANEL / max(1, min(int(shape[0]), int(shape[1])))))


# ---------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------

_FONT = None


def caption_font():
  """The captions' font: PIL's default at :data:`FONT_SIZE` px (its bitmap font without FreeType)."""
  global _FONT
  if _FONT is None:
    try:
      _FONT = ImageFont.load_default(size=FONT_SIZE)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
      _FONT = ImageFont.load_default()
  return _FONT


def _line_height(font) -> int:
  try:
    ascent, descent = font.getmetrics()
    return int(ascent + descent) + 2
  except AttributeError:
    return int(font.getbbox('Hgjy|[]')[3]) + 2


def _text_width(text: str, font) -> int:
  return int(math.ceil(font.getbbox(text)[2])) if text else 0


def wrap_caption(text: str, width: int, font=None) -> list[str]:
  """``text`` as lines no wider than ``width`` pixels in ``font``: broken between words, a word
  wider than a line between characters (so a caption is never cut, only wrapped)."""
  font = font or caption_font()
  lines: list[str] = []
  for word in str(text).split() or ['']:
    line = f'{lines[-1]} {word}' if lines else word
    if lines and _text_width(line, font) <= width:
      lines[-1] = line
      continue
    piece = ''
    for ch in word:  # a word alone on a line, broken where it does not fit
      if piece and _text_width(piece + ch, font) > width:
        lines.append(piece)
        piece = ''
      piece += ch
    lines.append(piece)
  return lines


# ---------------------------------------------------------------------------------------
# comparison grid
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridLayout:
  """Geometry of :func:`image_grid`.

  Every panel is the HR slice in display orientation enlarged by ``display_factor`` (nearest):
  ``panel_shape``. ``panel_origins[i]`` is the ``(row, col)`` of the top-left image pixel of panel
  ``i`` (0 LR, 1 bicubic, 2 SR, 3 HR, 4 error) in the first row. ``zoom_origins[i]`` is the
  top-left pixel of the enlarged region of panel ``i`` in the second row (empty without ``zoom``);
  ``zoom_factor`` is that region's enlargement over HR pixels (including ``display_factor``).
  ``caption_h`` is the height of the caption strip above each row; ``caption_lines[i]`` the
  wrapped lines of caption ``i`` (first row, then the zoom row), drawn from
  ``caption_origins[i]``; ``caption_boxes[i]`` is the ``(top, left, bottom, right)`` box of its
  text in the grid.
  """

  shape: tuple[int, int, int]
  panel_shape: tuple[int, int]
  panel_origins: list = field(default_factory=list)
  zoom_origins: list = field(default_factory=list)
  zoom_factor: int = 0
  display_factor: int = 1
  orientation: str = 'stored'
  caption_h: int = 0
  caption_lines: list = field(default_factory=list)
  caption_origins: list = field(default_factory=list)
  caption_boxes: list = field(default_factory=list)


N_PANELS = 5


def _zoom_caption(factor: int) -> str:
  return f'zoom x{factor}'


def _caption_block(captions, width: int, font) -> tuple[list[list[str]], int]:
  lines = [wrap_caption(c, width - 2 * CAPTION_PAD, font) for c in captions]
  return lines, max(len(x) for x in lines) * _line_height(font) + 2 * CAPTION_PAD


def grid_layout(hr_shape, zoom=None, *, orientation: str = 'stored', captions=None) -> GridLayout:
  """Layout of :func:`image_grid` for an HR slice of stored shape ``(H, W)``.

  The displayed panel is ``(Hd, Wd) = f * orient_for_display`` shape, ``f = display_factor``
  (``(H, W)``, or ``(W, H)`` for ``'ras'``). Without zoom the grid is ``(C + Hd, 5*Wd + 4*GAP, 3)``:
  a caption strip of ``C = caption_h`` rows (as many text lines as the longest wrapped caption of
  ``captions``, default one line) above five panels separated by ``GAP`` columns.

  With ``zoom=(y, x, h, w)`` (stored HR pixels) the region is enlarged by
  ``z = max(1, min(H // h, W // w)) * f`` in a second row (its ``'zoom xN'`` caption strip of
  ``C`` rows, then the region, ``h*z`` or, for ``'ras'``, ``w*z`` rows) after ``GAP`` rows; each
  enlarged region is centred horizontally in its panel's column. ``C`` fits the longest wrapped
  caption of either row.
  """
  if orientation not in ORIENTATIONS:
    raise ValueError(f'orientation {orientation!r}: use one of {", ".join(ORIENTATIONS)}')
  H, W = int(hr_shape[0]), int(hr_shape[1])
  f = display_factor((H, W))
  Hd, Wd = (H, W) if orientation == 'stored' else (W, H)
  Hd, Wd = Hd * f, Wd * f
  font = caption_font()
  captions = list(captions) if captions is not None else ['LR'] * N_PANELS
  z = 0
  if zoom is not None:
    y, x, h, w = (int(v) for v in zoom)
    if h < 1 or w < 1 or y < 0 or x < 0 or y + h > H or x + w > W:
      raise ValueError(f'zoom {zoom} is not a region inside the {H}x{W} HR image')
    z = max(1, min(H // h, W // w)) * f
    captions += [_zoom_caption(z // f)] * N_PANELS  # relative to the panels above
  lines, cap_h = _caption_block(captions, Wd, font)  # one strip height for both rows
  width = N_PANELS * Wd + (N_PANELS - 1) * GAP
  cols = [i * (Wd + GAP) for i in range(N_PANELS)]
  origins = [(cap_h, c) for c in cols]
  cap_origins = [(0, c) for c in cols]
  height, zoom_origins = cap_h + Hd, []
  if zoom is not None:
    _, _, hd, wd = _orient_region((y, x, h, w), (H, W), orientation)
    cap_origins += [(cap_h + Hd + GAP, c) for c in cols]
    top = cap_h + Hd + GAP + cap_h
    zoom_origins = [(top, c + (Wd - wd * z) // 2) for c in cols]
    height = top + hd * z
  line_h = _line_height(font)
  boxes = []
  for (r0, c0), caption in zip(cap_origins, lines):
    left, top_, right, bottom = c0 + 10**9, r0 + 10**9, -1, -1
    for k, text in enumerate(caption):
      if text:
        bl, bt, br, bb = font.getbbox(text)
        ty, tx = r0 + CAPTION_PAD + k * line_h, c0 + CAPTION_PAD
        left, top_, right, bottom = min(left, tx + bl), min(top_, ty + bt), max(right, tx + br), max(bottom, ty + bb)
    boxes.append((int(top_), int(left), int(math.ceil(bottom)), int(math.ceil(right))))
  return GridLayout(
    (height, width, 3),
    (Hd, Wd),
    origins,
    zoom_origins,
    z,
    f,
    orientation,
    cap_h,
    lines,
    cap_origins,
    boxes,
  )


def _caption_strip(lines: list[str], width: int, height: int) -> np.ndarray:
  """A ``(height, width, 3)`` strip with ``lines`` (wrapped to fit ``width``) in :func:`caption_font`."""
  font = caption_font()
  im = Image.new('RGB', (width, height), BACKGROUND)
  draw = ImageDraw.Draw(im)
  for k, text in enumerate(lines):
    draw.text((CAPTION_PAD, CAPTION_PAD + k * _line_height(font)), text, fill=CAPTION_COLOR, font=font)
  return np.asarray(im)


def _draw_box(panel: np.ndarray, zoom, t: int = 1) -> np.ndarray:
  """Outline the zoom region with a line ``t`` pixels wide just outside it (clipped to the panel)."""
  y, x, h, w = zoom
  im = Image.fromarray(panel)
  ImageDraw.Draw(im).rectangle([x - t, y - t, x + w - 1 + t, y + h - 1 + t], outline=BOX_COLOR, width=t)
  return np.asarray(im).copy()


def box_width(factor: int) -> int:
  """Pixels of the zoom outline on panels enlarged by ``factor`` (1 up to 7, then 2, ...)."""
  return max(1, factor // 4)


def _enlarge(a: np.ndarray, f: int) -> np.ndarray:
  return a if f == 1 else np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def image_grid(
  lr, bicubic, sr, hr, *, zoom=None, err_max: float | None = None, labels=None, orientation: str = 'stored'
):
  """Side-by-side comparison image, uint8 ``(rows, cols, 3)``.

  Panels, left to right: LR (nearest-upsampled to the HR size) | bicubic | SR | HR |
  ``|SR - HR|``. The four images are shown as ``to_uint8(x)`` (``[0, 1]`` -> 0..255,
  grey); the error map uses :func:`apply_colormap` scaled to ``[0, err_max]``
  (default: the largest error, at least 1e-6), and its caption states that max. ``labels``
  overrides the first four captions.

  Display only: every panel is turned by :func:`orient_for_display` (``orientation``: ``'stored'``
  or ``'ras'`` for slices of a RAS volume, see :func:`slice_orientation`) and enlarged by an
  integer factor (nearest) to at least :data:`MIN_PANEL` pixels on its short side. Each caption
  is wrapped to its panel's width (never cut) in a strip above the panel, so the image pixels
  themselves are untouched.

  ``zoom=(y, x, h, w)`` (stored HR pixels) adds a second row with that region of every panel
  enlarged by an integer factor (nearest; its caption states the factor over the panels above),
  and outlines the region on the first row (the outline, :func:`box_width` pixels, lies just
  outside the region). See :func:`grid_layout` for the exact
  shape and panel positions.
  """
  hr = np.asarray(hr, dtype=np.float64)
  if hr.ndim != 2:
    raise ValueError(f'expected 2-D slices, got hr {hr.shape}')
  bicubic = np.asarray(bicubic, dtype=np.float64)
  sr = np.asarray(sr, dtype=np.float64)
  lr = np.asarray(lr, dtype=np.float64)
  for name, a in (('bicubic', bicubic), ('sr', sr)):
    if a.shape != hr.shape:
      raise ValueError(f'{name} shape {a.shape} != hr shape {hr.shape}')
  if lr.ndim != 2 or lr.shape[0] > hr.shape[0] or lr.shape[1] > hr.shape[1]:
    raise ValueError(f'lr shape {lr.shape} must be 2-D and not larger than hr {hr.shape}')

  err = np.abs(sr - hr)
  emax = max(float(err.max()), 1e-6) if err_max is None else float(err_max)
  panels = [
    _gray_rgb(to_uint8(_upsample_nearest(lr, hr.shape))),
    _gray_rgb(to_uint8(bicubic)),
    _gray_rgb(to_uint8(sr)),
    _gray_rgb(to_uint8(hr)),
    apply_colormap(err, emax),
  ]
  names = list(DEFAULT_LABELS if labels is None else labels)
  if len(names) != 4:
    raise ValueError('labels must name the 4 image panels')
  names.append(f'|SR-HR| [0, {emax:.3g}]')
  layout = grid_layout(hr.shape, zoom, orientation=orientation, captions=names)
  f = layout.display_factor
  Hd, Wd = layout.panel_shape

  canvas = np.zeros(layout.shape, dtype=np.uint8)
  canvas[...] = BACKGROUND
  crops = []
  if zoom is not None:
    y, x, h, w = (int(v) for v in zoom)
    crops = [orient_for_display(p[y : y + h, x : x + w], orientation) for p in panels]
    yd, xd, hd, wd = _orient_region((y, x, h, w), hr.shape, orientation)
  panels = [_enlarge(orient_for_display(p, orientation), f) for p in panels]
  if zoom is not None:
    panels = [_draw_box(p, (yd * f, xd * f, hd * f, wd * f), box_width(f)) for p in panels]
  for (r0, c0), p in zip(layout.panel_origins, panels):
    canvas[r0 : r0 + Hd, c0 : c0 + Wd] = p
  for (r0, c0), c in zip(layout.zoom_origins, crops):
    big = _enlarge(c, layout.zoom_factor)
    canvas[r0 : r0 + big.shape[0], c0 : c0 + big.shape[1]] = big
  for (r0, c0), lines in zip(layout.caption_origins, layout.caption_lines):
    canvas[r0 : r0 + layout.caption_h, c0 : c0 + Wd] = _caption_strip(lines, Wd, layout.caption_h)
  return canvas


def save_png(path, array) -> str:
  """Write ``array`` as a PNG (creating parent folders) and return the path as ``str``.

  ``array`` is uint8 ``(H, W)`` or ``(H, W, 3|4)``; a float array is first passed
  through :func:`to_uint8` (``[0, 1]`` -> 0..255).
  """
  a = np.asarray(array)
  if a.dtype != np.uint8:
    if not np.issubdtype(a.dtype, np.floating):
      raise TypeError(f'save_png expects uint8 or float data, got {a.dtype}')
    a = to_uint8(a)
  return str(fileio.write_png(path, a))


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------

_METRIC_COLUMNS = (('psnr', 'PSNR (dB)'), ('ssim', 'SSIM'), ('nmse', 'NMSE'))


def _fmt(key: str, v) -> str:
  if v is None:
    return '—'
  v = float(v)
  if math.isnan(v):
    return 'nan'
  if math.isinf(v):
    return 'inf' if v > 0 else '-inf'
  if key == 'psnr':
    return f'{v:.2f}'
  if key == 'ssim':
    return f'{v:.4f}'
  if key == 'nmse':
    return f'{v:.5f}' if abs(v) >= 1e-3 or v == 0 else f'{v:.3e}'
  if key == 'gain':
    return f'{v:+.2f}'
  return f'{v:.4g}'


def _method_order(keys) -> list[str]:
  keys = list(keys)
  first = [k for k in ('model', 'bicubic') if k in keys]
  return first + [k for k in keys if k not in first]


def _gain(m: Mapping | None, ref: Mapping | None):
  if not m or not ref or 'psnr' not in m or 'psnr' not in ref:
    return None
  return float(m['psnr']) - float(ref['psnr'])


def _summary_rows(summary: Mapping) -> tuple[list[str], list[list[str]]]:
  header = ['method'] + [label for _, label in _METRIC_COLUMNS]
  has_ref = 'bicubic' in summary
  if has_ref:
    header.append('ΔPSNR vs bicubic (dB)')
  rows = []
  for name in _method_order(summary):
    m = summary[name] or {}
    row = [str(name)] + [_fmt(k, m.get(k)) for k, _ in _METRIC_COLUMNS]
    if has_ref:
      row.append(_fmt('gain', _gain(m, summary['bicubic'])))
    rows.append(row)
  return header, rows


def _per_volume_rows(per_volume: Sequence[Mapping]) -> tuple[list[str], list[list[str]]]:
  methods: list[str] = []
  for r in per_volume:
    for k, v in r.items():
      if isinstance(v, Mapping) and k not in methods:
        methods.append(k)
  methods = _method_order(methods)
  header = ['volume']
  for m in methods:
    header += [f'{m} {label}' for _, label in _METRIC_COLUMNS]
  gain = 'model' in methods and 'bicubic' in methods
  if gain:
    header.append('ΔPSNR (dB)')
  rows = []
  for r in per_volume:
    row = [str(r.get('volume', ''))]
    for m in methods:
      vals = r.get(m) or {}
      row += [_fmt(k, vals.get(k)) for k, _ in _METRIC_COLUMNS]
    if gain:
      row.append(_fmt('gain', _gain(r.get('model'), r.get('bicubic'))))
    rows.append(row)
  return header, rows


def _md_table(header, rows) -> list[str]:
  def line(cells):
    return '| ' + ' | '.join(str(c).replace('|', '\\|') for c in cells) + ' |'

  return [line(header), '|' + '|'.join(['---'] * len(header)) + '|'] + [line(r) for r in rows]


def _html_table(header, rows) -> str:
  esc = html.escape
  head = ''.join(f'<th>{esc(h)}</th>' for h in header)
  body = ''.join('<tr>' + ''.join(f'<td>{esc(c)}</td>' for c in r) + '</tr>' for r in rows)
  return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def to_jsonable(x):
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, np.bool_):
    return bool(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  return x


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}
figure{margin:0 0 1.5em}img{max-width:100%;image-rendering:pixelated}
figcaption{font-size:0.9em;color:#555}
"""


def write_report(
  out_dir,
  *,
  title: str,
  summary: Mapping,
  per_volume: Sequence[Mapping],
  images: Sequence[str],
  notes: Sequence[str] = (),
) -> dict:
  """Write ``report.md``, ``report.html`` and ``metrics.json`` into ``out_dir``.

  ``summary`` maps a method name to its metrics, e.g.
  ``{'model': {'psnr':..,'ssim':..,'nmse':..}, 'bicubic': {...}}``; rows are ordered
  model, bicubic, then the other keys, with a "ΔPSNR vs bicubic" column
  (``psnr[method] - psnr['bicubic']``) when ``'bicubic'`` is present; the model's
  PSNR/SSIM gain over bicubic is also stated in a sentence. ``per_volume`` rows look
  like ``{'volume': name, 'model': {...}, 'bicubic': {...}}``. ``images`` are paths
  relative to ``out_dir`` (shown as markdown images and ``<img src>``), ``notes`` are
  listed at the end. Numbers are printed as PSNR ``%.2f``, SSIM ``%.4f``, NMSE
  ``%.5f`` (``%.3e`` below 1e-3).

  ``metrics.json`` holds ``{'title', 'summary', 'per_volume', 'images', 'notes'}``
  (numpy scalars converted; an infinite PSNR is written as ``Infinity``, which Python's
  ``json`` reads back). ``out_dir`` is created if needed. Returns
  ``{'markdown': path, 'html': path, 'json': path}`` (``str`` paths).
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  images = [os.fspath(p) for p in images]
  notes = [str(n) for n in notes]
  s_head, s_rows = _summary_rows(summary)
  v_head, v_rows = _per_volume_rows(per_volume)

  gain_line = None
  if 'model' in summary and 'bicubic' in summary:
    m, b = summary['model'] or {}, summary['bicubic'] or {}
    parts = []
    g = _gain(m, b)
    if g is not None:
      parts.append(f'{_fmt("gain", g)} dB PSNR')
    if 'ssim' in m and 'ssim' in b:
      parts.append(f'{float(m["ssim"]) - float(b["ssim"]):+.4f} SSIM')
    if parts:
      gain_line = 'Model gain over bicubic: ' + ', '.join(parts) + '.'

  # ---- markdown
  md = [f'# {title}', '', '## Summary', '']
  md += _md_table(s_head, s_rows)
  if gain_line:
    md += ['', gain_line]
  md += ['', f'## Per volume ({len(per_volume)})', '']
  md += _md_table(v_head, v_rows) if per_volume else ['(none)']
  if images:
    md += ['', '## Images', '']
    for p in images:
      md += [f'![{Path(p).stem}]({quote(p.replace(os.sep, "/"))})', '']
  if notes:
    md += ['', '## Notes', ''] + [f'- {n}' for n in notes]
  md_path = out / 'report.md'
  fileio.write_text(md_path, '\n'.join(md).rstrip('\n') + '\n')

  # ---- html
  esc = html.escape
  parts = [
    '<!DOCTYPE html>',
    '<html lang="en"><head><meta charset="utf-8">',
    f'<title>{esc(title)}</title><style>{_CSS}</style></head><body>',
    f'<h1>{esc(title)}</h1>',
    '<h2>Summary</h2>',
    _html_table(s_head, s_rows),
  ]
  if gain_line:
    parts.append(f'<p>{esc(gain_line)}</p>')
  parts.append(f'<h2>Per volume ({len(per_volume)})</h2>')
  parts.append(_html_table(v_head, v_rows) if per_volume else '<p>(none)</p>')
  if images:
    parts.append('<h2>Images</h2>')
    for p in images:
      src = esc(quote(p.replace(os.sep, '/')), quote=True)
      parts.append(
        f'<figure><img src="{src}" alt="{esc(Path(p).stem, quote=True)}"><figcaption>{esc(p)}</figcaption></figure>'
      )
  if notes:
    parts.append('<h2>Notes</h2><ul>' + ''.join(f'<li>{esc(n)}</li>' for n in notes) + '</ul>')
  parts.append('</body></html>')
  html_path = out / 'report.html'
  fileio.write_text(html_path, '\n'.join(parts) + '\n')

  # ---- json
  payload = {
    'title': title,
    'summary': to_jsonable(summary),
    'per_volume': to_jsonable(list(per_volume)),
    'images': images,
    'notes': notes,
  }
  json_path = out / 'metrics.json'
  fileio.write_json(json_path, payload)

  return {'markdown': str(md_path), 'html': str(html_path), 'json': str(json_path)}


def link_report(workdir, title: str, target) -> str:
  """List ``target`` (a report page or figure) in ``workdir/index.html``, the run's front page.

  Entries live in ``workdir/reports.json`` as ``{'title', 'href'}`` with ``href`` relative to
  the workdir; linking the same target again replaces its title. Returns the index path.
  """
  work = Path(workdir)
  work.mkdir(parents=True, exist_ok=True)
  href = os.path.relpath(os.path.abspath(target), os.path.abspath(work)).replace(os.sep, '/')
  listing = work / 'reports.json'
  try:
    entries = json.loads(listing.read_text(encoding='utf-8'))
  except (OSError, ValueError):
    entries = []
  entries = [e for e in entries if isinstance(e, dict) and e.get('href') != href]
  entries.append({'title': str(title), 'href': href})
  fileio.write_json(listing, entries)  # atomic: evaluations may link concurrently
  esc = html.escape
  items = ''.join(
    f'<li><a href="{esc(quote(e["href"]), quote=True)}">{esc(e["title"])}</a> <code>{esc(e["href"])}</code></li>'
    for e in entries
  )
  page = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    f'<title>{esc(work.name)}</title><style>{_CSS}</style></head><body>'
    f'<h1>{esc(work.name)}</h1><h2>Reports</h2><ul>{items}</ul></body></html>\n'
  )
  index = work / 'index.html'
  fileio.write_text(index, page)
  return str(index)


def replace_section(path, section: str, heading: str) -> None:
  """Put ``section`` (which starts and ends with its ``<!-- x:begin -->``/``<!-- x:end -->``
  markers) into the markdown file ``path``: in place of the marked block, or appended under
  ``heading`` when the file has none. The benchmark tools write ``docs/benchmarks.md`` so."""
  begin, end = section.splitlines()[0], section.splitlines()[-1]
  p = Path(path)
  text = p.read_text(encoding='utf-8') if p.exists() else ''
  if begin in text:
    text = re.sub(re.escape(begin) + '.*?' + re.escape(end), lambda _: section, text, flags=re.S)
  else:
    text = text.rstrip() + f'\n\n{heading}\n\n' + section + '\n'
  fileio.write_text(p, text)
