"""Tests of the image-folder source (mrisr_jax.data.images) and tools/downsample.py (tiny images)."""

from __future__ import annotations

import importlib.util
import pathlib
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from mrisr_jax.data import degrade
from mrisr_jax.data import images
from mrisr_jax.data.errors import DataError

pytestmark = pytest.mark.unit

REPO = pathlib.Path(__file__).resolve().parents[1]
H, W = 24, 36
LSB = 1 / 255


def _load_downsample():
  spec = importlib.util.spec_from_file_location('downsample_tool', REPO / 'tools' / 'downsample.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


downsample = _load_downsample()


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def random_u8(seed: int, shape=(H, W)) -> np.ndarray:
  return np.random.default_rng(seed).integers(1, 256, size=shape, dtype=np.uint8)


def save(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def make_split(root: pathlib.Path, n: int = 2, shape=(H, W)) -> pathlib.Path:
  for i in range(n):
    save(root / 'HR' / f'img{i}.png', random_u8(i, shape))
  return root


def run_tool(*args) -> int:
  return downsample.main([str(a) for a in args])


def cv2_area_fx(x: np.ndarray, s: int) -> np.ndarray:
  """OpenCV resize(fx=fy=1/s, INTER_AREA) written out: size round-half-even(H/s), s x s block means
  from the corner, a block overhanging the image averaging only the pixels that exist."""
  oh, ow = round(x.shape[0] / s), round(x.shape[1] / s)
  return np.array([[x[i * s : (i + 1) * s, j * s : (j + 1) * s].mean() for j in range(ow)] for i in range(oh)])


def one_line_error(excinfo) -> str:
  message = str(excinfo.value)
  assert '\n' not in message
  return message


# ----------------------------------------------------------------------------------------------
# reading and writing
# ----------------------------------------------------------------------------------------------
def test_read_8bit_and_16bit_png_exactly(tmp_path):
  u8 = random_u8(0)
  u16 = np.random.default_rng(1).integers(0, 65536, size=(H, W), dtype=np.uint16)
  got8, info8 = images.read_image(save(tmp_path / 'a.png', u8))
  got16, info16 = images.read_image(save(tmp_path / 'b.png', u16))
  assert got8.dtype == got16.dtype == np.float32
  np.testing.assert_array_equal(got8, (u8 / 255).astype(np.float32))
  np.testing.assert_array_equal(got16, (u16 / 65535).astype(np.float32))
  assert (info8['mode'], info8['bit_depth'], info8['size']) == ('L', 8, (W, H))
  assert (info16['mode'], info16['bit_depth']) == ('I;16', 16)
  # big-endian 16-bit ('I;16B') and 32-bit integer ('I') TIFFs hold 16-bit data too
  Image.frombytes('I;16B', (W, H), u16.astype('>u2').tobytes()).save(tmp_path / 'c.tif')
  save(tmp_path / 'd.tif', u16.astype(np.int32))
  for name, mode in (('c.tif', 'I;16B'), ('d.tif', 'I')):
    got, info = images.read_image(tmp_path / name)
    assert (info['mode'], info['bit_depth']) == (mode, 16)
    np.testing.assert_array_equal(got, got16)
  with pytest.raises(DataError, match=r'e\.tif: 32-bit integer image with values in \[70000, 70000\]'):
    images.read_grey(save(tmp_path / 'e.tif', np.full((H, W), 70000, np.int32)))


def test_read_colour_uses_pil_601_luma(tmp_path):
  rgb = np.random.default_rng(2).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
  path = save(tmp_path / 'rgb.png', rgb)
  got, info = images.read_image(path)
  assert info['colour'] and info['mode'] == 'RGB'
  np.testing.assert_array_equal(got * 255, np.asarray(Image.fromarray(rgb).convert('L')))
  luma = rgb @ np.array([0.299, 0.587, 0.114]) / 255
  np.testing.assert_allclose(got, luma, atol=LSB)
  # an RGBA with equal channels is grey: no colour flag, alpha dropped
  grey = np.repeat(random_u8(3)[..., None], 4, axis=-1)
  grey[..., 3] = 7
  _, info = images.read_image(save(tmp_path / 'grey.png', grey))
  assert not info['colour'] and info['alpha']  # what was lost is said (infer warns, naming the file)
  grey[..., 3] = 255  # an opaque alpha channel loses nothing
  _, info = images.read_image(save(tmp_path / 'opaque.png', grey))
  assert not info['colour'] and not info['alpha']
  assert images.read_image(path)[1]['alpha'] is False


def test_read_float_images_must_be_normalised(tmp_path):
  x = np.random.default_rng(4).random((H, W)).astype(np.float32)
  np.testing.assert_array_equal(images.read_grey(save(tmp_path / 'ok.tif', x)), x)
  with pytest.raises(DataError, match=r'bad\.tif: float image has values in'):
    images.read_grey(save(tmp_path / 'bad.tif', x * 3))


def test_write_grey_rounds_half_to_even_and_clips(tmp_path):
  x = np.array([[0.5 / 255, 1.5 / 255, 2.5 / 255, -0.2, 1.3, 1.0]])
  images.write_grey(tmp_path / 'a.png', x)
  assert np.asarray(Image.open(tmp_path / 'a.png')).tolist() == [[0, 2, 2, 0, 255, 255]]
  y = np.random.default_rng(5).random((H, W))
  images.write_grey(tmp_path / 'b.png', y, bit_depth=16)
  back = images.read_grey(tmp_path / 'b.png')
  np.testing.assert_allclose(back, y, atol=0.5 / 65535 + 1e-7)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.png', 'b.png']  # no temp files left
  with pytest.raises(ValueError, match='bit_depth'):
    images.write_grey(tmp_path / 'c.png', y, bit_depth=12)


def test_list_files_names_the_directory(tmp_path):
  with pytest.raises(DataError, match=f'{tmp_path / "HR"}: no HR image directory'):
    images.list_files(tmp_path)
  (tmp_path / 'HR').mkdir()
  (tmp_path / 'HR' / 'notes.txt').write_text('x')
  with pytest.raises(DataError, match=f'{tmp_path / "HR"}: no images'):
    images.list_files(tmp_path)
  save(tmp_path / 'HR' / 'b.PNG', random_u8(0))
  save(tmp_path / 'HR' / 'a.bmp', random_u8(1))
  assert [p.name for p in images.list_files(tmp_path)] == ['a.bmp', 'b.PNG']


# ----------------------------------------------------------------------------------------------
# downsample.py and paired sources
# ----------------------------------------------------------------------------------------------
def test_downsample_writes_pairs_the_source_loads(tmp_path, capsys):
  root = make_split(tmp_path, n=2)
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', root / 'LR', '--scales', 2, 3, 4) == 0
  assert 'wrote 6 LR images (2 images x 3 scales' in capsys.readouterr().out
  for s in (2, 3, 4):
    source = images.ImageFolderSource(root, scale=s)
    assert source.has_lr and source.lr_keepdims is False and len(source) == 2
    element = source[1]
    assert element['volume'] == 'img1' and element['slice'] == 0
    assert element['image'].shape == (H, W) and element['lr'].shape == (H // s, W // s)
    np.testing.assert_allclose(
      element['lr'], degrade.area_resize(element['image'], H // s, W // s), atol=0.5 * LSB + 1e-6
    )
    meta = source.volumes[1].metadata
    assert meta['lr_path'] == root / 'LR' / f'x{s}' / f'img1x{s}.png'
    assert (meta['mode'], meta['bit_depth'], meta['size']) == ('L', 8, (W, H))
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[0]['lr'], source[0]['lr'])


def test_downsample_keepdims_and_blur(tmp_path):
  root = make_split(tmp_path, n=1)
  hr = images.read_grey(root / 'HR' / 'img0.png').astype(np.float64)
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', tmp_path / 'K', '--scales', 2, '-k') == 0
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', tmp_path / 'B', '--scales', 2, '-b') == 0
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', tmp_path / 'A', '--scales', 2) == 0
  plain = images.read_grey(tmp_path / 'A' / 'x2' / 'img0x2.png')
  kept = images.read_grey(tmp_path / 'K' / 'x2' / 'img0x2.png')
  blurred = images.read_grey(tmp_path / 'B' / 'x2' / 'img0x2.png')
  # -k: the 8-bit area LR, bicubic back to the HR size
  assert kept.shape == (H, W)
  np.testing.assert_allclose(kept, np.clip(degrade.bicubic_resize(plain, H, W), 0, 1), atol=0.5 * LSB + 1e-6)
  # -b: blur first, then area (each rounded to 8 bits, as on cv2's uint8 images)
  expected = degrade.area_resize(degrade.gaussian_blur(hr, 1.0), H // 2, W // 2)
  np.testing.assert_allclose(blurred, expected, atol=LSB + 1e-6)
  assert np.abs(blurred - plain).max() > 5 * LSB
  # and the source pairs HR-sized LR files as keepdims
  (tmp_path / 'LR').mkdir()
  (tmp_path / 'K' / 'x2').rename(tmp_path / 'LR' / 'x2')
  source = images.ImageFolderSource(root, scale=2, lr_from_files=True)
  assert source.lr_keepdims is True and source[0]['lr'].shape == (H, W)


def test_downsample_keeps_16_bit_depth(tmp_path):
  u16 = np.random.default_rng(6).integers(1, 65536, size=(H, W), dtype=np.uint16)
  save(tmp_path / 'HR' / 'deep.png', u16)
  assert run_tool('--hr_dir', tmp_path / 'HR', '--lr_dir', tmp_path / 'LR', '--scales', 3) == 0
  lr, info = images.read_image(tmp_path / 'LR' / 'x3' / 'deepx3.png')
  assert info['bit_depth'] == 16
  np.testing.assert_allclose(lr, degrade.area_resize(u16 / 65535, H // 3, W // 3), atol=0.5 / 65535 + 1e-7)


def test_cv2_output_size_rule():
  # saturate_cast<int>(size * (1/s)) rounds half to even
  cases = [(24, 2), (25, 2), (27, 2), (26, 4), (30, 4), (10, 3), (11, 3)]
  assert [downsample.lr_size(n, n, s)[0] for n, s in cases] == [12, 12, 14, 6, 8, 3, 4]
  x = np.random.default_rng(7).random((27, 37))
  for s in (2, 3, 4):
    got = downsample.area_shrink(x, s)
    np.testing.assert_allclose(got, cv2_area_fx(x, s), rtol=0, atol=1e-12)


def test_non_divisible_hr_is_a_mismatched_pair(tmp_path):
  root = make_split(tmp_path, n=1, shape=(25, 37))
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', root / 'LR', '--scales', 2) == 0
  lr_path = root / 'LR' / 'x2' / 'img0x2.png'
  lr = images.read_grey(lr_path)
  assert lr.shape == (12, 18)
  np.testing.assert_allclose(lr, cv2_area_fx(images.read_grey(root / 'HR' / 'img0.png'), 2), atol=0.5 * LSB + 1e-6)
  with pytest.raises(DataError) as excinfo:
    images.ImageFolderSource(root, scale=2)
  message = one_line_error(excinfo)
  assert 'mismatched HR/LR pair at scale 2' in message
  assert str(root / 'HR' / 'img0.png') in message and str(lr_path) in message
  assert '25x37' in message and '12x18' in message


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------
def _break(root: pathlib.Path, kind: str) -> tuple[pathlib.Path, str]:
  """Adds one bad HR image (with its LR partner where that is not the fault)."""
  hr = root / 'HR' / 'bad.png'
  lr = root / 'LR' / 'x2' / 'badx2.png'
  if kind == 'missing_lr':
    save(hr, random_u8(9))
    return lr, 'is missing'
  if kind == 'mismatched':
    save(hr, random_u8(9))
    save(lr, random_u8(9, (H // 3, W // 3)))
    return hr, 'mismatched HR/LR pair'
  if kind == 'corrupt':
    hr.write_bytes(np.random.default_rng(9).bytes(300))
    return hr, 'cannot read the image'
  if kind == 'truncated':
    save(hr, random_u8(9))
    hr.write_bytes(hr.read_bytes()[:200])
    return hr, 'cannot read the image'
  if kind == 'black':
    save(hr, np.zeros((H, W), np.uint8))
    return hr, 'has no signal'
  if kind == 'black_lr':
    save(hr, random_u8(9))
    save(lr, np.zeros((H // 2, W // 2), np.uint8))
    return lr, 'has no signal'
  raise AssertionError(kind)


@pytest.mark.parametrize('kind', ['missing_lr', 'mismatched', 'corrupt', 'truncated', 'black', 'black_lr'])
def test_bad_files_raise_or_are_skipped(tmp_path, kind):
  root = make_split(tmp_path, n=2)
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', root / 'LR', '--scales', 2) == 0
  culprit, problem = _break(root, kind)
  with pytest.raises(DataError) as excinfo:
    images.ImageFolderSource(root, scale=2)
  message = one_line_error(excinfo)
  assert message.startswith(f'{culprit}: ') and problem in message
  source = images.ImageFolderSource(root, scale=2, skip_bad_files=True)
  assert len(source.skipped) == 1 and source.skipped[0][0] == root / 'HR' / 'bad.png'
  assert [v.name for v in source.volumes] == ['img0', 'img1']
  assert source[1]['lr'].shape == (H // 2, W // 2)


def test_mixed_keepdims_folder_is_rejected(tmp_path):
  root = make_split(tmp_path, n=2)
  save(root / 'LR' / 'x2' / 'img0x2.png', random_u8(0, (H // 2, W // 2)))
  save(root / 'LR' / 'x2' / 'img1x2.png', random_u8(1))
  with pytest.raises(DataError, match='mixes HR-sized LR images'):
    images.ImageFolderSource(root, scale=2)


def test_lr_from_files_modes(tmp_path):
  root = make_split(tmp_path, n=1)
  assert not images.ImageFolderSource(root, scale=2).has_lr  # auto, no LR dir
  with pytest.raises(DataError, match=f'{root / "LR" / "x2"}: no paired LR directory'):
    images.ImageFolderSource(root, scale=2, lr_from_files=True)
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', root / 'LR', '--scales', 2) == 0
  ignored = images.ImageFolderSource(root, scale=2, lr_from_files=False)
  assert not ignored.has_lr and 'lr' not in ignored[0] and ignored.lr_keepdims is None
  assert images.ImageFolderSource(root, scale=2).has_lr  # auto finds it
  assert not images.ImageFolderSource(root, scale=4).has_lr  # no LR/x4: degrade instead
  with pytest.raises(ValueError, match='lr_from_files'):
    images.ImageFolderSource(root, scale=2, lr_from_files='yes')


# ----------------------------------------------------------------------------------------------
# downsample.py command line
# ----------------------------------------------------------------------------------------------
def test_downsample_refuses_to_overwrite(tmp_path, capsys):
  root = make_split(tmp_path, n=1)
  args = ['--hr_dir', root / 'HR', '--lr_dir', root / 'LR', '--scales', 2]
  assert run_tool(*args) == 0
  before = (root / 'LR' / 'x2' / 'img0x2.png').read_bytes()
  capsys.readouterr()
  assert run_tool(*args, '-b') == 1
  err = capsys.readouterr().err.strip()
  assert err == (
    f'downsample.py: error: {root / "LR" / "x2" / "img0x2.png"}: already exists; pass --overwrite to replace'
  )
  assert (root / 'LR' / 'x2' / 'img0x2.png').read_bytes() == before
  assert run_tool(*args, '-b', '--overwrite') == 0
  assert (root / 'LR' / 'x2' / 'img0x2.png').read_bytes() != before


def test_downsample_bad_input_writes_nothing(tmp_path, capsys):
  root = make_split(tmp_path, n=1)
  (root / 'HR' / 'zz.png').write_bytes(b'not a png')
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', root / 'LR', '--scales', 2) == 1
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f'downsample.py: error: {root / "HR" / "zz.png"}: ')
  assert not (root / 'LR').exists()
  # never into the HR folder
  assert run_tool('--hr_dir', root / 'HR', '--lr_dir', root / 'HR', '--scales', 2) == 1
  assert 'is inside --hr_dir' in capsys.readouterr().err


def test_downsample_converts_colour_with_one_warning(tmp_path, capsys):
  rgb = np.random.default_rng(8).integers(1, 256, size=(H, W, 3), dtype=np.uint8)
  save(tmp_path / 'HR' / 'c.png', rgb)
  assert run_tool('--hr_dir', tmp_path / 'HR', '--lr_dir', tmp_path / 'LR', '--scales', 2) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'warning: 1 colour image(s)' in err[0]
  lr, info = images.read_image(tmp_path / 'LR' / 'x2' / 'cx2.png')
  assert info['mode'] == 'L'
  grey = images.read_grey(tmp_path / 'HR' / 'c.png')
  np.testing.assert_allclose(lr, degrade.area_resize(grey, H // 2, W // 2), atol=0.5 * LSB + 1e-6)
  assert run_tool('--hr_dir', tmp_path / 'HR', '--lr_dir', tmp_path / 'G', '--scales', 2, '-g') == 0
  assert capsys.readouterr().err == ''


@pytest.mark.integration  # subprocess
def test_downsample_help_runs_as_a_script(tmp_path):
  # timeout: a hang guard, not a speed test (this takes about a second)
  proc = subprocess.run(
    [sys.executable, str(REPO / 'tools' / 'downsample.py'), '--help'],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, proc.stderr
  for flag in ('--hr_dir', '--lr_dir', '--scales', '--grey', '--blur', '--keepdims', '--overwrite'):
    assert flag in proc.stdout
