"""mrisr_jax.fileio: atomic writes keep the old file when the writer fails and honour the umask;
temporaries are tracked; slice stacks round-trip; colour PNGs are converted with a warning."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest
from PIL import Image

from mrisr_jax import fileio

pytestmark = pytest.mark.unit


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
  path = tmp_path / 'out.json'
  path.write_text('old')
  seen = []

  def broken(tmp):
    seen.append(tmp)
    tmp.write_text('half')
    raise OSError('disk full')

  with pytest.raises(OSError, match='disk full'):
    fileio.atomic_write(path, broken)
  assert path.read_text() == 'old'
  assert [p.name for p in tmp_path.iterdir()] == ['out.json']  # the temporary file is gone
  # the temporary file sits beside the output and ends with its name (writers pick formats by suffix)
  assert seen[0].parent == tmp_path and seen[0].name.endswith('.out.json') and seen[0].name[0] == '.'


def test_atomic_write_replaces_and_creates_folders(tmp_path):
  path = tmp_path / 'sub' / 'out.json'
  fileio.write_json(path, {'a': 1})
  assert json.loads(path.read_text()) == {'a': 1} and path.read_text().endswith('}\n')
  fileio.write_text(path, 'new')
  assert path.read_text() == 'new'
  assert [p.name for p in path.parent.iterdir()] == ['out.json']


def test_npy_stacks_round_trip_with_their_rank(tmp_path):
  stack = np.random.default_rng(0).random((3, 5, 4)).astype(np.float32)
  np.save(tmp_path / 'slice.npy', stack[0])
  x, info = fileio.read_stack(tmp_path / 'slice.npy', 'npy')
  assert x.shape == (1, 5, 4) and info == {'ndim': 2}
  fileio.write_stack(tmp_path / 'out.npy', 'npy', x * 0.5, info)
  np.testing.assert_array_equal(np.load(tmp_path / 'out.npy'), stack[0] * 0.5)
  bad = stack.copy()
  bad[0, 0, 0] = np.nan
  np.save(tmp_path / 'bad.npy', bad)
  with pytest.raises(fileio.FileError, match='bad.npy: has non-finite values'):
    fileio.read_stack(tmp_path / 'bad.npy', 'npy')
  assert fileio.stack_kind(tmp_path / 'a.nii.gz') == 'nii' and fileio.stack_kind(tmp_path / 'a.txt') is None


@pytest.fixture(params=[0o022, 0o077], ids=['umask022', 'umask077'])
def umask(request):
  old = os.umask(request.param)
  try:
    yield request.param
  finally:
    os.umask(old)


def test_outputs_are_created_with_mode_0666_minus_the_umask(tmp_path, umask):
  from mrisr_jax.data.images import write_grey
  from mrisr_jax.interop import state_dict_io

  want = 0o666 & ~umask
  assert fileio.umask() == umask and fileio.new_file_mode() == want
  fileio.write_json(tmp_path / 'a.json', {'a': 1})
  fileio.write_text(tmp_path / 'a.md', 'x')
  fileio.write_npy(tmp_path / 'a.npy', np.zeros(3))
  fileio.write_png(tmp_path / 'a.png', np.zeros((4, 4), np.uint8))
  write_grey(tmp_path / 'g.png', np.zeros((4, 4)), bit_depth=16)
  info = {'ndim': 3, 'max': 2.0, 'target': 'reconstruction_esc', 'attrs': {}}
  fileio.write_stack(tmp_path / 'a.h5', 'h5', np.zeros((1, 4, 4), np.float32), info)
  state_dict_io.save_state_dict({'w': np.zeros(3, np.float32)}, tmp_path / 'w.safetensors')
  # a writer that creates its file privately (as mkstemp does) does not leak 0600 into the output
  fileio.atomic_write(tmp_path / 'private.bin', lambda tmp: os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)))
  modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.iterdir()}
  assert len(modes) == 8 and set(modes.values()) == {oct(want)}, modes


def test_temporaries_are_tracked_while_they_exist(tmp_path):
  seen = []
  fileio.atomic_write(
    tmp_path / 'a.txt', lambda tmp: seen.append(str(tmp) in fileio._TEMPORARIES) or tmp.write_text('a')
  )
  assert seen == [True] and not fileio._TEMPORARIES
  kept, gone = tmp_path / '.tmp.kept', tmp_path / '.tmp.gone'
  kept.write_text('x')
  fileio.track_temporary(kept)
  fileio.track_temporary(gone)  # never created (or already moved into place)
  assert fileio.remove_temporaries() == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt'] and not fileio._TEMPORARIES


def test_colour_png_is_converted_with_a_warning_naming_the_file(tmp_path, caplog):
  rgb = np.zeros((6, 5, 3), np.uint8)
  rgb[..., 0] = 200  # red: luma 0.299 * 200
  Image.fromarray(rgb).save(tmp_path / 'red.png')
  rgba = np.full((6, 5, 4), 90, np.uint8)
  rgba[0, 0, 3] = 0  # grey, but one transparent pixel
  Image.fromarray(rgba).save(tmp_path / 'see_through.png')
  Image.fromarray(np.full((6, 5), 90, np.uint8)).save(tmp_path / 'grey.png')
  Image.fromarray(np.full((6, 5, 3), 90, np.uint8)).save(tmp_path / 'grey_rgb.png')  # nothing lost
  with caplog.at_level(logging.WARNING):
    x, info = fileio.read_stack(tmp_path / 'red.png', 'png')
  assert x.shape == (1, 6, 5) and info == {'ndim': 2, 'bit_depth': 8}
  np.testing.assert_allclose(x, round(0.299 * 200) / 255, atol=1e-6)
  assert [r.getMessage() for r in caplog.records] == [
    f'{tmp_path / "red.png"}: colour image converted to greyscale (ITU-R 601 luma)'
  ]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    fileio.read_stack(tmp_path / 'see_through.png', 'png')
  assert [r.getMessage() for r in caplog.records] == [
    f'{tmp_path / "see_through.png"}: RGBA image converted to greyscale (ITU-R 601 luma) and its alpha channel dropped'
  ]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    fileio.read_stack(tmp_path / 'grey.png', 'png')
    fileio.read_stack(tmp_path / 'grey_rgb.png', 'png')
  assert caplog.records == []


def test_evaluate_reads_a_colour_truth_image_with_the_same_warning(tmp_path, caplog):
  from mrisr_jax import evaluate

  rgb = np.zeros((8, 8, 3), np.uint8)
  rgb[..., 1] = 100
  Image.fromarray(rgb).save(tmp_path / 'green.png')
  with caplog.at_level(logging.WARNING):
    truth = evaluate.read_truth(tmp_path / 'green.png', None)
  assert truth['hr'].shape == (1, 8, 8)
  assert [r.getMessage() for r in caplog.records] == [
    f'{tmp_path / "green.png"}: colour image converted to greyscale (ITU-R 601 luma)'
  ]
