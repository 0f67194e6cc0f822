"""mrisr_jax.report: comparison grid, PNG writing and the markdown/html/json report."""

import html.parser
import json
import math
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mrisr_jax import report
from mrisr_jax.report import (
  CAPTION_PAD,
  DEFAULT_LABELS,
  GAP,
  MIN_PANEL,
  ORIENTATIONS,
  apply_colormap,
  box_width,
  caption_font,
  grid_layout,
  image_grid,
  orient_for_display,
  save_png,
  slice_orientation,
  to_uint8,
  write_report,
)

pytestmark = pytest.mark.unit


def _inputs(h=48, w=40, scale=4, seed=0):
  rng = np.random.default_rng(seed)
  hr = rng.random((h, w))
  lr = rng.random((h // scale, w // scale))
  bic = rng.random((h, w))
  sr = np.clip(hr + 0.1 * rng.standard_normal((h, w)), 0, 1)
  return lr, bic, sr, hr


def test_to_uint8():
  x = np.array([-0.5, 0.0, 0.5, 1.0, 2.0, np.nan])
  np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 0])
  np.testing.assert_array_equal(to_uint8(np.array([0.0, 1.0, 2.0, 3.0]), vmax=2.0), [0, 128, 255, 255])
  assert to_uint8(np.zeros((3, 4))).dtype == np.uint8


def test_colormap_ramp():
  c = apply_colormap(np.linspace(0, 1, 11), 1.0)
  assert c.shape == (11, 3) and c.dtype == np.uint8
  lum = c.astype(float) @ [0.299, 0.587, 0.114]
  assert np.all(np.diff(lum) > 0)  # monotonically brighter
  assert tuple(c[0]) == (0, 0, 4) and tuple(c[-1]) == (252, 253, 191)
  np.testing.assert_array_equal(apply_colormap(np.array([5.0]), 1.0), c[-1:])


def _enlarge(a, f):
  return np.repeat(np.repeat(a, f, 0), f, 1)


def test_grid_shape_and_panels_without_zoom():
  lr, bic, sr, hr = _inputs()
  H, W = hr.shape
  g = image_grid(lr, bic, sr, hr)
  assert g.dtype == np.uint8
  lay = grid_layout(hr.shape, captions=list(DEFAULT_LABELS) + ['|SR-HR| [0, 0.1]'])
  f = lay.display_factor
  assert f == 7 and lay.panel_shape == (H * f, W * f)  # 40 * 7 = 280 >= MIN_PANEL, 40 * 6 is not
  C = lay.caption_h
  assert g.shape == lay.shape == (C + H * f, 5 * W * f + 4 * GAP, 3)
  expected = [
    np.repeat(np.repeat(to_uint8(lr), 4, 0), 4, 1),  # nearest upsampling, integer factor
    to_uint8(bic),
    to_uint8(sr),
    to_uint8(hr),
  ]
  for i, exp in enumerate(expected):
    r0, c0 = lay.panel_origins[i]
    assert (r0, c0) == (C, i * (W * f + GAP))
    panel = g[r0 : r0 + H * f, c0 : c0 + W * f]
    for ch in range(3):
      np.testing.assert_array_equal(panel[..., ch], _enlarge(exp, f))
  err = np.abs(sr - hr)
  r0, c0 = lay.panel_origins[4]
  np.testing.assert_array_equal(g[r0 : r0 + H * f, c0 : c0 + W * f], _enlarge(apply_colormap(err, err.max()), f))
  # captions: the strip above each panel has some text pixels
  for r0, c0 in lay.panel_origins:
    assert g[:C, c0 : c0 + W * f].max() > 128


def test_grid_error_max_and_labels():
  lr, bic, sr, hr = _inputs(48, 120)
  g1 = image_grid(lr, bic, sr, hr, err_max=0.05)
  g2 = image_grid(lr, bic, sr, hr, err_max=0.5)
  lay = grid_layout(hr.shape)
  f, C, (_, Wd) = lay.display_factor, lay.caption_h, lay.panel_shape
  r0, c0 = lay.panel_origins[4]
  np.testing.assert_array_equal(g1[r0:, c0 : c0 + Wd], _enlarge(apply_colormap(np.abs(sr - hr), 0.05), f))
  assert not np.array_equal(g1[:C, c0:], g2[:C, c0:])  # caption states max
  g3 = image_grid(lr, bic, sr, hr, labels=('a', 'b', 'c', 'd'))
  assert not np.array_equal(g3[:C, :Wd], image_grid(lr, bic, sr, hr)[:C, :Wd])
  with pytest.raises(ValueError):
    image_grid(lr, bic[:-1], sr, hr)


def test_grid_with_zoom():
  lr, bic, sr, hr = _inputs(64, 80)
  H, W = hr.shape
  zoom = (20, 30, 12, 16)
  y, x, h, w = zoom
  g = image_grid(lr, bic, sr, hr, zoom=zoom)
  lay = grid_layout(hr.shape, zoom)
  f, C = lay.display_factor, lay.caption_h
  assert f == 4 and lay.zoom_factor == 5 * f  # the region: 5x its size in the panels above
  assert g.shape == lay.shape == (2 * C + H * f + GAP + h * 5 * f, 5 * W * f + 4 * GAP, 3)
  t = box_width(f)
  panels = [to_uint8(np.repeat(np.repeat(lr, 4, 0), 4, 1)), to_uint8(bic), to_uint8(sr), to_uint8(hr)]
  for i, p in enumerate(panels):
    r0, c0 = lay.panel_origins[i]
    first = g[r0 : r0 + H * f, c0 : c0 + W * f, 0]
    big = _enlarge(p, f)
    # the region itself is untouched; the box is drawn just outside it
    np.testing.assert_array_equal(
      first[y * f : (y + h) * f, x * f : (x + w) * f], big[y * f : (y + h) * f, x * f : (x + w) * f]
    )
    np.testing.assert_array_equal(first[: y * f - t], big[: y * f - t])
    box = g[r0 : r0 + H * f, c0 : c0 + W * f]
    assert tuple(box[y * f - 1, x * f + 3]) == (0, 255, 128)
    assert tuple(box[(y + h) * f, x * f - 1]) == (0, 255, 128)
    zr, zc = lay.zoom_origins[i]
    z = lay.zoom_factor
    np.testing.assert_array_equal(
      g[zr : zr + h * z, zc : zc + w * z, 0], np.kron(p[y : y + h, x : x + w], np.ones((z, z), np.uint8))
    )
  with pytest.raises(ValueError):
    image_grid(lr, bic, sr, hr, zoom=(60, 0, 10, 10))


def test_grid_non_integer_lr():
  hr = np.random.default_rng(5).random((30, 30))
  lr = hr[::4, ::4]  # 8 x 8
  g = image_grid(lr, hr, hr, hr)
  lay = grid_layout(hr.shape)
  assert lay.display_factor == 9 and g.shape == (lay.caption_h + 270, 5 * 270 + 4 * GAP, 3)


def _ink(a) -> np.ndarray:
  """Where caption text is drawn (the background is black)."""
  return np.asarray(a)[..., :3].max(-1) > 40


def test_small_volume_figure_is_enlarged_and_its_captions_are_never_cut():
  lr, bic, sr, hr = _inputs(24, 40, scale=4)
  long = 'a deliberately long caption that cannot fit on one line of even an enlarged panel'
  labels = (long, 'Bicubic', 'SR', 'HR')
  for orientation in ORIENTATIONS:
    zoom = (4, 8, 6, 10)
    g = image_grid(lr, bic, sr, hr, zoom=zoom, labels=labels, orientation=orientation)
    emax = float(np.abs(sr - hr).max())
    lay = grid_layout(hr.shape, zoom, orientation=orientation, captions=list(labels) + [f'|SR-HR| [0, {emax:.3g}]'])
    assert g.shape == lay.shape
    Hd, Wd = lay.panel_shape
    assert min(Hd, Wd) >= MIN_PANEL == 256 and lay.display_factor == 11  # 24 px -> 264 px
    rows, cols = g.shape[:2]
    assert len(lay.caption_lines[0]) >= 2  # the long label is wrapped, not cut
    for i, ((top, left, bottom, right), (r0, c0)) in enumerate(zip(lay.caption_boxes, lay.caption_origins)):
      # the text's box lies inside the image, its own caption strip and its panel's column
      assert 0 <= top and bottom <= rows and 0 <= left and right <= cols, i
      assert r0 <= top and bottom <= r0 + lay.caption_h and c0 <= left and right <= c0 + Wd, i
      strip = g[r0 : r0 + lay.caption_h, c0 : c0 + Wd]
      ink = _ink(strip)
      assert ink.any() and not ink[:, -1].any() and not ink[-1].any(), i  # nothing runs off an edge
      # all the text is drawn: the strip equals the caption drawn on an ample canvas, which has no
      # ink beyond the column
      font, line_h = caption_font(), report._line_height(caption_font())
      alone = Image.new('RGB', (4 * Wd, 4 * lay.caption_h))
      for k, text in enumerate(lay.caption_lines[i]):
        ImageDraw.Draw(alone).text((CAPTION_PAD, CAPTION_PAD + k * line_h), text, fill=(255, 255, 255), font=font)
      alone = np.asarray(alone)
      assert not _ink(alone[:, Wd:]).any() and not _ink(alone[lay.caption_h :]).any(), i
      np.testing.assert_array_equal(strip, alone[: lay.caption_h, :Wd])
    words = ' '.join(' '.join(lay.caption_lines[0]).split())
    assert words == long  # wrapping loses no word


def test_ras_slices_are_shown_radiologically_by_the_one_orientation_helper():
  """A RAS slice (axial: first axis subject left -> right, second posterior -> anterior) is shown
  with anterior at the top and the subject's right on the viewer's left."""
  H, W = 24, 40
  hr = np.full((H, W), 0.2)
  hr[H - 1, W - 1] = 1.0  # right, anterior
  hr[0, W - 1] = 0.6  # left, anterior
  hr[H - 1, 0] = 0.4  # right, posterior
  shown = orient_for_display(hr, 'ras')
  assert shown.shape == (W, H)
  assert shown[0, 0] == 1.0 and shown[0, -1] == 0.6 and shown[-1, 0] == 0.4
  np.testing.assert_array_equal(orient_for_display(hr, 'stored'), hr)
  np.testing.assert_array_equal(orient_for_display(np.dstack([hr] * 3), 'ras')[..., 1], shown)
  assert slice_orientation('nifti') == 'ras' and slice_orientation('fastmri') == slice_orientation('npy') == 'stored'
  lr = hr[::4, ::4]
  zoom = (H - 6, W - 10, 6, 10)  # the right anterior corner
  g = image_grid(lr, hr, hr, hr, zoom=zoom, orientation='ras')
  lay = grid_layout(hr.shape, zoom, orientation='ras')
  f, (Hd, Wd) = lay.display_factor, lay.panel_shape
  assert (Hd, Wd) == (W * f, H * f)
  r0, c0 = lay.panel_origins[3]  # HR
  panel = g[r0 : r0 + Hd, c0 : c0 + Wd, 0]
  expected = _enlarge(to_uint8(shown), f)
  t = box_width(f)  # the zoom region is the top-left 10 x 6 of the shown slice; away from its outline:
  np.testing.assert_array_equal(panel[10 * f + t :, :], expected[10 * f + t :, :])
  np.testing.assert_array_equal(panel[:, 6 * f + t :], expected[:, 6 * f + t :])
  assert panel[0, 0] == 255 and tuple(g[r0 + 10 * f, c0 + 2]) == (0, 255, 128)  # the outline below it
  zr, zc = lay.zoom_origins[3]
  z = lay.zoom_factor
  np.testing.assert_array_equal(
    g[zr : zr + 10 * z, zc : zc + 6 * z, 0], np.kron(to_uint8(shown[:10, :6]), np.ones((z, z), np.uint8))
  )
  with pytest.raises(ValueError, match='orientation'):
    image_grid(lr, hr, hr, hr, orientation='lps')


def test_save_png(tmp_path):
  a = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
  p = save_png(tmp_path / 'sub' / 'x.png', a)
  np.testing.assert_array_equal(np.asarray(Image.open(p)), a)
  f = np.linspace(0, 1, 20).reshape(4, 5)
  p2 = save_png(tmp_path / 'f.png', f)
  np.testing.assert_array_equal(np.asarray(Image.open(p2)), to_uint8(f))


class _ImgSrc(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.srcs = []

  def handle_starttag(self, tag, attrs):
    if tag == 'img':
      self.srcs.append(dict(attrs)['src'])


def _report_inputs():
  summary = {
    'model': {'psnr': 33.4567, 'ssim': 0.91234, 'nmse': 0.012345},
    'bicubic': {'psnr': 30.1234, 'ssim': 0.85678, 'nmse': 0.034567},
    'sr_no_gan': {'psnr': np.float64(33.9), 'ssim': np.float32(0.92), 'nmse': 0.0111},
  }
  per_volume = [
    {
      'volume': 'file1000001',
      'model': {'psnr': 32.5, 'ssim': 0.9, 'nmse': 0.0125},
      'bicubic': {'psnr': 29.75, 'ssim': 0.85, 'nmse': 0.0375},
    },
    {
      'volume': 'file1000002',
      'model': {'psnr': math.inf, 'ssim': 1.0, 'nmse': 0.0},
      'bicubic': {'psnr': 31.0, 'ssim': 0.86, 'nmse': 0.03},
    },
  ]
  return summary, per_volume


def test_write_report(tmp_path):
  out = tmp_path / 'new' / 'report dir'
  lr, bic, sr, hr = _inputs()
  save_png(out / 'images' / 'vol 1.png', image_grid(lr, bic, sr, hr))
  save_png(out / 'images' / 'vol2.png', image_grid(lr, bic, sr, hr, zoom=(4, 4, 8, 8)))
  images = ['images/vol 1.png', 'images/vol2.png']
  summary, per_volume = _report_inputs()
  paths = write_report(
    out, title='Eval <x4>', summary=summary, per_volume=per_volume, images=images, notes=['trained 10k steps', 'a & b']
  )
  assert set(paths) == {'markdown', 'html', 'json'}
  for p in paths.values():
    assert Path(p).is_file() and Path(p).parent == out
  assert Path(paths['markdown']).name == 'report.md'
  assert Path(paths['html']).name == 'report.html'
  assert Path(paths['json']).name == 'metrics.json'

  md = Path(paths['markdown']).read_text()
  for s in [
    '# Eval <x4>',
    'PSNR (dB)',
    'SSIM',
    'NMSE',
    '33.46',
    '0.9123',
    '0.01235',
    '30.12',
    '0.8568',
    '0.03457',
    '+3.33',
    '33.90',
    '0.9200',
    'file1000001',
    '32.50',
    '29.75',
    '+2.75',
    'inf',
    'trained 10k steps',
    'images/vol%201.png',
    'images/vol2.png',
  ]:
    assert s in md, s
  lines = md.splitlines()
  rows = [ln for ln in lines if ln.startswith('| model') or ln.startswith('| bicubic')]
  assert rows[0].startswith('| model') and rows[1].startswith('| bicubic')
  assert lines.index(rows[0]) < lines.index(next(ln for ln in lines if 'file1000001' in ln))

  page = Path(paths['html']).read_text()
  assert page.startswith('<!DOCTYPE html>')
  assert 'Eval &lt;x4&gt;' in page and 'a &amp; b' in page and '33.46' in page
  parser = _ImgSrc()
  parser.feed(page)
  assert len(parser.srcs) == 2
  for src in parser.srcs:
    assert not src.startswith('/') and '://' not in src
    assert (out / unquote(src)).is_file()

  data = json.loads(Path(paths['json']).read_text())
  assert data['summary']['model'] == summary['model']
  assert data['summary']['sr_no_gan']['ssim'] == pytest.approx(0.92)
  assert data['per_volume'] == per_volume  # inf round-trips through Python's json
  assert data['images'] == images and data['title'] == 'Eval <x4>'


def test_write_report_minimal(tmp_path):
  paths = write_report(tmp_path / 'r', title='t', summary={'model': {'psnr': 20.0}}, per_volume=[], images=[])
  md = Path(paths['markdown']).read_text()
  assert '20.00' in md and '—' in md
  assert json.loads(Path(paths['json']).read_text())['per_volume'] == []


def test_replace_section_replaces_only_its_block_or_appends(tmp_path):
  from mrisr_jax.report import replace_section

  page = tmp_path / 'bench.md'
  page.write_text('# B\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\n<!-- b:begin -->\nold b\n<!-- b:end -->\n')
  replace_section(page, '<!-- a:begin -->\nnew a\n<!-- a:end -->', '## A')
  text = page.read_text()
  assert 'new a' in text and 'old a' not in text and 'old b' in text and '## A' not in text
  replace_section(page, '<!-- c:begin -->\nc\n<!-- c:end -->', '## C')
  assert page.read_text().endswith('## C\n\n<!-- c:begin -->\nc\n<!-- c:end -->\n')


def test_link_report_lists_each_target_once(tmp_path):
  from mrisr_jax.report import link_report

  (tmp_path / 'run' / 'eval').mkdir(parents=True)
  link_report(tmp_path / 'run', 'first', tmp_path / 'run' / 'eval' / 'report.html')
  index = link_report(tmp_path / 'run', 'again', tmp_path / 'run' / 'eval' / 'report.html')
  link_report(tmp_path / 'run', 'curves', tmp_path / 'run' / 'report' / 'curves.png')
  text = Path(index).read_text()
  assert text.count('href="eval/report.html"') == 1 and '>again<' in text and '>first<' not in text
  assert 'href="report/curves.png"' in text
