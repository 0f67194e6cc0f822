"""mrisr_jax.fileio: atomic writes keep the old file when the writer fails; slice stacks round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
