"""Workdir paths: URIs such as gs:// stay URIs end to end; profile ranges are checked at start-up."""

import types

import pytest
from etils import epath

from mrisr_jax import checkpoint, config_check, train
from mrisr_jax import spec as spec_lib

pytestmark = pytest.mark.unit


def test_uri_workdirs_stay_uris_and_local_ones_become_absolute(tmp_path, monkeypatch):
  for uri in ('gs://bucket/runs/x4', 's3://bucket/run'):
    path = checkpoint.workdir_path(uri)
    assert str(path) == uri
    assert str(path / 'checkpoints') == uri + '/checkpoints'
  monkeypatch.chdir(tmp_path)
  assert checkpoint.workdir_path('runs/a') == epath.Path(tmp_path / 'runs' / 'a')
  assert not (tmp_path / 'gs:').exists()


def test_report_files_of_a_remote_workdir_are_copied_there(tmp_path, monkeypatch):
  """Images and the report are staged locally and copied through epath to a remote workdir (here a
  local epath standing in for the bucket: no network in tests)."""
  monkeypatch.setattr(train, '_is_local', lambda path: False)
  staged = tmp_path / 'staged'
  (staged / 'report').mkdir(parents=True)
  (staged / 'report' / 'report.html').write_text('<html>')
  (staged / 'images').mkdir()
  (staged / 'images' / 'grid.png').write_bytes(b'\x89PNG')
  bucket = epath.Path(tmp_path / 'bucket' / 'run')
  train._upload_files(types.SimpleNamespace(workdir=bucket, files=staged, is_chief=True))
  assert (bucket / 'report' / 'report.html').read_text() == '<html>'
  assert (bucket / 'images' / 'grid.png').read_bytes() == b'\x89PNG'
  assert not staged.exists()  # the staging folder is removed


@pytest.mark.parametrize('spec', ['3', '5:2', 'a:b', '-1:4', '2:2'])
def test_profile_steps_must_be_a_range(spec):
  with pytest.raises(config_check.ConfigError, match='config.profile_steps'):
    spec_lib.parse_profile_steps(spec)
  assert spec_lib.parse_profile_steps('2:5') == (2, 5)
