"""mrisr_jax.run_curves and tools/plot_run.py: scalars from clu event files, curve PNG, CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrisr_jax.run_curves import RunCurvesError, plot_curves, plot_run, read_scalars

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / 'tools' / 'plot_run.py'


def _write(workdir, rows, hparams=None, image=False):
  """rows: [(step, {tag: value})], written in order with clu's default (TF summary) writer."""
  from clu import metric_writers

  w = metric_writers.create_default_writer(str(workdir), asynchronous=False)
  if hparams:
    w.write_hparams(hparams)
  for step, scalars in rows:
    w.write_scalars(step, scalars)
  if image:  # non-scalar summaries must be skipped
    w.write_images(rows[-1][0], {'val/grid': np.zeros((1, 4, 4, 1), np.float32)})
  w.flush()
  w.close()


def _train(step):
  return {
    'train/g_loss': 1.0 / (step + 1),
    'train/l1': 0.5 / (step + 1),
    'train/d_loss': 0.7,
    'train/adv': 0.01 * step,
    'train/grad_norm_g': 3.0 + step,
    'train/lr_g': 1e-4 * (step + 1),
    'train/lr_d': 2e-4,
  }


def _val(step):
  return {
    'val/model_psnr': 30.0 + step,
    'val/bicubic_psnr': 28.0,
    'val/model_ssim': 0.9,
    'val/bicubic_ssim': 0.8,
    'val/model_nmse': 0.01,
    'val/bicubic_nmse': 0.02,
    'val/psnr_gain': 2.0 + step,
  }


def _expected(rows):
  exp = {}
  for step, scalars in rows:
    for tag, v in scalars.items():
      exp.setdefault(tag, {})[step] = float(np.float32(v))  # last write wins
  return exp


def _assert_scalars(got, exp):
  assert set(exp) <= set(got)
  for tag, by_step in exp.items():
    steps, values = got[tag]
    assert steps.dtype == np.int64 and values.dtype == np.float64, tag
    np.testing.assert_array_equal(steps, sorted(by_step), err_msg=tag)
    np.testing.assert_allclose(values, [by_step[s] for s in sorted(by_step)], rtol=1e-6, err_msg=tag)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('run')
  rows = [(s, _train(s)) for s in (0, 10, 20, 30)]
  rows += [(20, _val(20)), (30, _val(30))]
  rows += [(30, {'train/g_loss': 0.123})]  # same step again in the same file
  _write(d, rows, hparams={'lr': 1e-4, 'model': 'casr'}, image=True)
  # A resumed run: a second event file rewrites step 30 and goes on.
  resumed = [(30, {'train/g_loss': 0.05, 'val/model_psnr': 33.5}), (40, {**_train(40), **_val(40)})]
  _write(d, resumed)
  # Event files in subfolders are read too.
  sub = [(5, {'eval/extra': 1.5})]
  _write(d / 'sub', sub)
  return d, _expected(rows + resumed + sub)


def test_read_scalars_steps_values_last_wins(run_dir):
  d, exp = run_dir
  got = read_scalars(d)
  _assert_scalars(got, exp)
  assert got['train/g_loss'][1][-2] == pytest.approx(0.05)  # step 30: the resumed value
  assert got['val/model_psnr'][1][1] == pytest.approx(33.5)
  assert not any(t.startswith('val/grid') for t in got)  # images are not scalars
  assert len(list(d.rglob('events.out.tfevents.*'))) == 3


def test_plot_run_default_path(run_dir):
  d, _ = run_dir
  path = plot_run(d)
  assert path == str(d / 'report' / 'curves.png')
  with Image.open(path) as im:
    assert im.format == 'PNG'
    w, h = im.size
  assert h >= 200 and w >= 2.5 * h  # three panels side by side
  assert [p.name for p in (d / 'report').iterdir()] == ['curves.png']  # no temp file left


def test_only_train_scalars_omits_panels(tmp_path):
  rows = [(s, {'train/g_loss': 1.0 / (s + 1), 'train/l1': 0.2}) for s in range(3)]
  _write(tmp_path, rows)
  got = read_scalars(tmp_path)
  _assert_scalars(got, _expected(rows))
  out = tmp_path / 'plots' / 'only_losses.png'
  assert plot_run(tmp_path, out) == str(out)
  with Image.open(out) as im:
    w, h = im.size
  assert h >= 200 and w < 1.5 * h  # one panel


def test_plot_curves_panel_choice(tmp_path):
  steps = np.arange(3, dtype=np.int64)
  one = lambda v: (steps, np.full(3, v, np.float64))  # noqa: E731
  sizes = {}
  for name, scalars in {
    'lr': {'train/lr_g': (steps, np.array([0.0, 1e-4, 2e-4]))},
    'psnr': {'val/bicubic_psnr': one(28.0)},
    'lr_psnr': {'train/lr_g': one(1e-4), 'val/model_psnr': one(30.0)},
  }.items():
    with Image.open(plot_curves(scalars, tmp_path / f'{name}.png', title=name)) as im:
      sizes[name] = im.size
  assert sizes['lr'][0] == sizes['psnr'][0] < sizes['lr_psnr'][0]
  with pytest.raises(RunCurvesError, match='nothing to plot'):
    plot_curves({'val/model_ssim': one(0.9), 'train/grad_norm_g': one(1.0)}, tmp_path / 'x.png')
  assert not (tmp_path / 'x.png').exists()


def test_empty_and_missing_dir_raise(tmp_path):
  with pytest.raises(RunCurvesError, match='no TensorBoard event files') as e:
    read_scalars(tmp_path)
  assert str(tmp_path) in str(e.value) and '\n' not in str(e.value)
  with pytest.raises(RunCurvesError, match='does not exist') as e:
    plot_run(tmp_path / 'missing')
  assert str(tmp_path / 'missing') in str(e.value)
  assert isinstance(e.value, ValueError)


def _cli(*args):
  # timeout: a hang guard, not a speed test (these runs take 1-3 s)
  return subprocess.run(
    [sys.executable, str(CLI), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=60
  )


@pytest.mark.integration  # subprocess
def test_cli_help():
  r = _cli('--help')
  assert r.returncode == 0, r.stderr
  assert '--workdir' in r.stdout and '--out' in r.stdout


@pytest.mark.integration  # subprocess
def test_cli_empty_dir(tmp_path):
  r = _cli('--workdir', tmp_path)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and str(tmp_path) in lines[0]
  assert r.stdout == ''
