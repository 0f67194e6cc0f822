"""The entry point as users run it: the quick job end to end, and one-line errors for bad input."""

import collections
import json
import re

import h5py
import nibabel as nib
import numpy as np
import pytest

from tests.helpers import error_line, run_main

pytestmark = pytest.mark.integration  # the entry point in a subprocess; the README job is e2e
# A guard against hangs, not a speed test: the main job takes about 3 minutes on 2 idle cores
# (docs/benchmarks.md; this whole test took 177 s alone) and several times that on a loaded CI machine.
README_JOB_TIMEOUT = 1800


@pytest.mark.e2e
def test_readme_main_job_writes_checkpoint_events_images_and_report(tmp_path):
  """The README's main job exactly (configs/casrgan_x4.py:quick), then the same command again."""
  workdir = tmp_path / 'run'
  proc = run_main('--config', 'configs/casrgan_x4.py:quick', '--workdir', str(workdir), timeout=README_JOB_TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'using the embedded sample data' in proc.stderr
  assert 'RANDOMLY INITIALISED' in proc.stderr
  _check_log(proc.stderr)
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and steps[-1] == (100 + 5 + 3) * 4  # epochs of the three stages x 4 steps
  assert list(workdir.glob('events.out.tfevents.*'))
  assert list((workdir / 'images').glob('grid_*.png'))
  for name in ('report.md', 'report.html', 'metrics.json'):
    assert (workdir / 'report' / name).stat().st_size > 0
  metrics = json.loads((workdir / 'report' / 'metrics.json').read_text())
  assert metrics['summary']['model']['psnr'] > metrics['summary']['bicubic']['psnr'], metrics['summary']
  assert 'bicubic' in (workdir / 'report' / 'report.md').read_text()
  # the run's front page links its report and the training curves plotted from its event files
  assert (workdir / 'report' / 'curves.png').stat().st_size > 0
  index = (workdir / 'index.html').read_text()
  assert 'href="report/report.html"' in index and 'href="report/curves.png"' in index
  assert 'curves.png' in (workdir / 'report' / 'report.md').read_text()

  # the README's other uses, with its commands: super-resolve a scan, evaluate against bicubic
  scan = run_main('--out', str(tmp_path / 'scan_lr.nii.gz'), '--scale', '4', module='tools/sample_scan.py')
  assert scan.returncode == 0, scan.stderr[-2000:]
  sr = run_main(
    '--config',
    'configs/casrgan_x4.py:quick',
    '--weights',
    str(workdir),
    '--input',
    str(tmp_path / 'scan_lr.nii.gz'),
    '--output',
    str(tmp_path / 'scan_sr.nii.gz'),
    module='mrisr_jax.infer',
  )
  assert sr.returncode == 0, sr.stderr[-2000:]
  out = nib.load(tmp_path / 'scan_sr.nii.gz')
  assert out.shape == (192, 168, 8) and np.allclose(out.header.get_zooms(), (1, 1, 2))
  ev = run_main(
    '--config',
    'configs/casrgan_x4.py:quick',
    '--weights',
    str(workdir),
    '--input',
    'mrisr_jax/sample_data/val',
    '--report',
    str(workdir / 'eval'),
    '--json',
    str(tmp_path / 'eval.json'),
    module='mrisr_jax.evaluate',
  )
  assert ev.returncode == 0, ev.stderr[-2000:]
  scores = json.loads((tmp_path / 'eval.json').read_text())
  # all 8 slices of the validation volume (validation scored 4 of them): the model still wins
  assert scores['mean']['model']['psnr'] > scores['mean']['bicubic']['psnr'], scores['mean']
  assert scores['volumes'][0]['slices'] == 8
  assert 'mean (1)' in ev.stdout
  assert 'href="eval/report.html"' in (workdir / 'index.html').read_text()

  again = run_main('--config', 'configs/casrgan_x4.py:quick', '--workdir', str(workdir), timeout=README_JOB_TIMEOUT)
  assert again.returncode == 0, again.stderr[-4000:]
  assert 'resumed from' in again.stderr


def _check_log(stderr: str) -> None:
  """The job's log says each thing once, without library noise, and says when it compiles."""
  lines = []
  for line in stderr.splitlines():  # the message without absl's prefix (level, time, thread)
    m = re.match(r'[IWEF]\d{4} [\d:.]+ +\d+ (\S+:\d+)\] (.*)', line)
    lines.append(f'{m[1]} {m[2]}' if m else line)
  repeated = [line for line, n in collections.Counter(lines).items() if n > 1]
  assert repeated == [], repeated
  text = '\n'.join(lines)
  for noise in ('logging_writer', 'Unable to initialize backend', 'Closing', 'work unit notes', 'oneDNN'):
    assert noise not in text, noise
  for stage in ('pretrain', 'finetune', 'gan'):
    before = [line for line in lines if f"compiling stage {stage}'s train step" in line]
    assert len(before) == 1 and 'a first compile can take minutes on CPU' in before[0], before
    assert re.search(f'stage {stage}: step compiled in [\\d.]+ s', text), stage
  assert re.search(r'\[pretrain\] step 50/432 .* steps/s, ETA \d+m\d\ds', text)


def _h5(path, **datasets):
  with h5py.File(path, 'w') as f:
    for key, value in datasets.items():
      f.create_dataset(key, data=value)


def _data_root(tmp_path, train_file_maker):
  root = tmp_path / 'data'
  (root / 'train').mkdir(parents=True)
  (root / 'val').mkdir()
  good = np.random.default_rng(0).uniform(0.1, 1, (3, 96, 96)).astype(np.float32)
  _h5(root / 'val' / 'v.h5', reconstruction_rss=good)
  train_file_maker(root / 'train' / 'bad.h5', good)
  return root


BAD_FILES = {
  'missing keys': (lambda p, g: _h5(p, something_else=g), 'reconstruction_rss'),
  'wrong rank': (lambda p, g: _h5(p, reconstruction_rss=g[0]), 'rank'),
  'non-finite': (lambda p, g: _h5(p, reconstruction_rss=np.where(g > 0.9, np.nan, g)), 'non-finite'),
  'not hdf5': (lambda p, g: p.write_bytes(b'this is not an hdf5 file'), 'bad.h5'),
}


@pytest.mark.parametrize('case', sorted(BAD_FILES))
def test_bad_data_files_stop_with_one_line_naming_the_file(tmp_path, case):
  maker, expected = BAD_FILES[case]
  root = _data_root(tmp_path, maker)
  proc = run_main(
    '--config', 'configs/casrgan_x4.py:quick', '--workdir', str(tmp_path / 'w'), f'--config.data.root={root}'
  )
  assert proc.returncode != 0
  line = error_line(proc)
  assert 'bad.h5' in line and expected.lower() in line.lower(), line


@pytest.mark.parametrize(
  'args,expected',
  [
    (['--config.data.root=/no/such/dir'], '/no/such/dir'),
    (['--config.data.hr_patch_size=480'], 'hr_patch_size=480'),
    (['--config.model.scale=5'], 'config.model.scale=5'),
    (['--config.model.name=esrgan'], "'esrgan'"),
    (['--config.model.sacle=4'], 'sacle'),
    (['--config.stages.gan.schedule=cosine'], 'cosine'),
    (['--config.batch_size=0'], 'batch_size=0'),
  ],
)
def test_bad_config_values_stop_with_one_line_naming_them(tmp_path, args, expected):
  proc = run_main('--config', 'configs/casrgan_x4.py:quick', '--workdir', str(tmp_path / 'w'), *args)
  assert proc.returncode != 0
  assert expected in error_line(proc)


def test_empty_data_directory_is_named(tmp_path):
  root = tmp_path / 'empty'
  (root / 'train').mkdir(parents=True)
  proc = run_main(
    '--config', 'configs/casrgan_x4.py:quick', '--workdir', str(tmp_path / 'w'), f'--config.data.root={root}'
  )
  assert proc.returncode != 0
  assert 'train' in error_line(proc)


def test_seed_recipe_without_vgg_weights_says_how_to_provide_them(tmp_path):
  proc = run_main(
    '--config',
    'configs/casrgan_x4.py',
    '--workdir',
    str(tmp_path / 'w'),
    '--config.stage_order=("gan",)',
    '--config.batch_size=2',
  )
  assert proc.returncode != 0
  line = error_line(proc)
  assert 'vgg_weights' in line and 'vgg19' in line
