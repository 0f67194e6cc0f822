"""mrisr_jax.evaluate: fastMRI-convention scores against bicubic, every input kind, reports, errors.

The model is SRCNN with weights chosen so that it is exactly the identity on its (bicubic) input:
its SR is the bicubic image bit for bit, so the gain over bicubic must be exactly zero.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from mrisr_jax import evaluate, network_variables
from mrisr_jax.data import fastmri_files
from mrisr_jax.data.images import write_grey
from mrisr_jax.spec import data_spec
from mrisr_jax.interop import convert, state_dict_io
from tests.helpers import REPO

pytestmark = pytest.mark.unit

skm = pytest.importorskip('skimage.metrics')


def _config(name, arg):
  sys.path.insert(0, str(REPO))
  import importlib

  return importlib.import_module(f'configs.{name}').get_config(arg)


def _identity_srcnn(config) -> dict:
  """SRCNN weights that copy the input: a centre tap 1 through channel 0 of every layer, biases 0
  (ReLU passes the non-negative input unchanged)."""
  like = network_variables.like_variables(config)['params']
  p = {
    k: {'kernel': np.zeros(v['kernel'].shape, np.float32), 'bias': np.zeros(v['bias'].shape, np.float32)}
    for k, v in like.items()
  }
  for layer in p.values():
    kh, kw = layer['kernel'].shape[:2]
    layer['kernel'][kh // 2, kw // 2, 0, 0] = 1.0
  return {'params': p}


def _smooth(shape, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.random(shape)
  for axis in (-1, -2):
    x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
  return (0.05 + 0.9 * (x - x.min()) / (x.max() - x.min())).astype(np.float32)


@pytest.fixture(scope='module')
def identity(tmp_path_factory):
  root = tmp_path_factory.mktemp('identity')
  config = _config('srcnn', 'x2,quick')
  path = root / 'identity.safetensors'
  state_dict_io.save_state_dict(convert.flax_to_state_dict('srcnn', _identity_srcnn(config)), path)
  return config, path


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """One input of every kind in a folder: .npy stack, 16-bit .png, fastMRI .h5, .nii.gz."""
  d = tmp_path_factory.mktemp('scans')
  np.save(d / 'stack.npy', _smooth((3, 34, 30), 1))  # 34 x 30 is cropped to 34 x 30 (even), fine
  write_grey(d / 'slice.png', _smooth((41, 36), 2), bit_depth=16)  # 41 rows -> cropped to 40
  # fastMRI's single-coil layout (kspace, reconstruction_esc, ismrmrd_header, attrs max/norm)
  fastmri_files.write_volume(d / 'file1000.h5', target=_smooth((2, 32, 28), 3) * 3e-4, attrs={'acquisition': 'AXT1'})
  nib.save(
    nib.Nifti1Image((_smooth((30, 26, 4), 4) * 900).astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), d / 'brain.nii.gz'
  )
  return d


def test_exactly_bicubic_model_gains_nothing_on_every_input_kind(identity, inputs, tmp_path):
  config, path = identity
  out = evaluate.evaluate(config, path, [inputs], json_path=tmp_path / 'e.json', log=lambda *_: None)
  assert [v['volume'] for v in out['volumes']] == ['brain', 'file1000', 'slice', 'stack']
  for v in out['volumes']:
    assert v['psnr_gain'] == 0.0 and v['model'] == v['bicubic'], v['volume']
    for s in v['per_slice']:
      assert s['model'] == s['bicubic']
  assert out['mean']['psnr_gain'] == 0.0
  saved = json.loads((tmp_path / 'e.json').read_text())
  for who in ('model', 'bicubic'):
    assert set(saved['mean'][who]) == {'psnr', 'ssim', 'nmse'}
    assert set(saved['volumes'][0][who]) == {'psnr', 'ssim', 'nmse'}
  slice_row = next(v for v in saved['volumes'] if v['volume'] == 'slice')
  assert slice_row['hr_shape'] == [40, 36] and slice_row['cropped_from'] == [41, 36]
  assert any('centre-cropped from (41, 36)' in n for n in saved['notes'])


def test_scores_follow_fastmri_volume_conventions(identity, tmp_path):
  """Per slice and per volume, PSNR/SSIM use the volume's maximum as data range (skimage), NMSE the
  fastMRI formula; the bicubic reference is computed from the same seeded LR."""
  from mrisr_jax.data import degrade, pipeline

  config, path = identity
  hr = _smooth((3, 32, 28), 5)
  hr[1] *= 0.5  # slices with different maxima: the data range must be the volume's
  np.save(tmp_path / 'v.npy', hr)
  out = evaluate.evaluate(config, path, [tmp_path / 'v.npy'], log=lambda *_: None)['volumes'][0]
  _, lr = pipeline.degrade_volume(hr, 'v', [0, 1, 2], 2, data_spec(config.data).degradation, config.seed)
  bic = np.clip(degrade.bicubic_resize(lr, 32, 28), 0, 1).astype(np.float64)
  r = hr.max()
  gt = hr.astype(np.float64)
  assert abs(out['bicubic']['psnr'] - skm.peak_signal_noise_ratio(gt, bic, data_range=r)) < 1e-6
  ssims = [skm.structural_similarity(g, p, data_range=r) for g, p in zip(gt, bic)]
  assert abs(out['bicubic']['ssim'] - np.mean(ssims)) < 1e-6
  assert abs(out['bicubic']['nmse'] - np.linalg.norm(gt - bic) ** 2 / np.linalg.norm(gt) ** 2) < 1e-6
  for k, row in enumerate(out['per_slice']):
    assert abs(row['bicubic']['psnr'] - skm.peak_signal_noise_ratio(gt[k], bic[k], data_range=r)) < 1e-6
    assert abs(row['bicubic']['ssim'] - ssims[k]) < 1e-6


def test_report_writes_every_file_it_promises_and_baselines_are_scored(identity, inputs, tmp_path):
  config, path = identity
  lines = []
  out = evaluate.evaluate(
    config,
    path,
    [inputs / 'stack.npy', inputs / 'brain.nii.gz'],
    report_dir=tmp_path / 'report',
    baselines=[str(path)],
    log=lines.append,
  )
  report = tmp_path / 'report'
  figures = sorted(p.name for p in report.glob('*.png'))
  assert figures == ['000_stack.png', '001_brain.png']
  assert {p.name for p in report.iterdir()} == set(figures) | {'report.md', 'report.html', 'metrics.json'}
  html, md = (report / 'report.html').read_text(), (report / 'report.md').read_text()
  for name in figures:
    assert f'src="{name}"' in html and f']({name})' in md
  from PIL import Image

  # five panels of the HR width enlarged for display (30 px -> 270 px, the first factor >= 256), 2-px gaps
  assert Image.open(report / figures[0]).size[0] == 5 * 30 * 9 + 4 * 2
  assert out['methods'] == ['model', 'bicubic', 'identity.safetensors']
  assert out['volumes'][0]['identity.safetensors'] == out['volumes'][0]['model']
  assert 'identity.safetensors' in md and 'bicubic' in md
  table = lines[0]
  assert 'stack' in table and 'brain' in table and 'mean (2)' in table and '+0.00' in table


def test_a_workdir_is_scored_at_its_best_step_and_the_report_says_which(identity, inputs, tmp_path):
  """The best step (by validation PSNR) holds the exact-bicubic weights, the later ones do not: the
  default scores the best, --step latest / N the others, and the JSON and report name the step."""
  from mrisr_jax.checkpoint import BEST_METRIC, Checkpointer

  config, _ = identity
  exact = _identity_srcnn(config)['params']
  ckpt = Checkpointer(tmp_path / 'run', keep=5, async_save=False)
  for step, scale, psnr in ((100, 1.0, 35.5), (150, 0.5, 20.0), (200, 0.8, None)):
    params = {k: {n: v * scale for n, v in layer.items()} for k, layer in exact.items()}
    ckpt.save(step, {'g_params': params}, {'stage': 'pretrain'}, {BEST_METRIC: psnr} if psnr else None)
  ckpt.close()
  run, lines = tmp_path / 'run', []
  out = evaluate.evaluate(
    config, run, [inputs / 'stack.npy'], json_path=tmp_path / 'e.json', report_dir=tmp_path / 'r', log=lines.append
  )
  assert out['step'] == 100 and out['step_reason'] == 'best validation PSNR 35.50 dB; latest is 200'
  assert out['mean']['psnr_gain'] == 0.0  # the exact-bicubic weights
  assert lines[0] == f'using step 100 of {run} (best validation PSNR 35.50 dB; latest is 200)'
  assert json.loads((tmp_path / 'e.json').read_text())['step'] == 100
  assert (
    f'weights: {run} step 100 (best validation PSNR 35.50 dB; latest is 200)'
    in (tmp_path / 'r' / 'report.md').read_text()
  )
  quiet = {'log': lambda *_: None}
  latest = evaluate.evaluate(config, run, [inputs / 'stack.npy'], step='latest', **quiet)
  assert latest['step'] == 200 and latest['mean']['psnr_gain'] < 0
  assert evaluate.evaluate(config, run, [inputs / 'stack.npy'], step='150', **quiet)['step'] == 150
  with pytest.raises(network_variables.WeightsError, match=r'no checkpoint at step 120 \(saved: 100, 150, 200\)'):
    evaluate.evaluate(config, run, [inputs / 'stack.npy'], step=120, **quiet)
  with pytest.raises(
    network_variables.WeightsError, match=r'--step newest: use best, latest .*\(saved: 100, 150, 200\)'
  ):
    evaluate.evaluate(config, run, [inputs / 'stack.npy'], step='newest', **quiet)


def test_report_figures_show_nifti_slices_radiologically(identity, inputs, tmp_path):
  """A NIfTI volume's figure is the grid of report.image_grid in RAS orientation (the helper every
  figure uses), panels at least report.MIN_PANEL pixels; other inputs are shown as stored."""
  from PIL import Image

  from mrisr_jax import report
  from mrisr_jax.spec import resolve

  config, path = identity
  evaluate.evaluate(config, path, [inputs / 'brain.nii.gz'], report_dir=tmp_path / 'r', log=lambda *_: None)
  truth = evaluate.read_truth(inputs / 'brain.nii.gz', resolve(config).data)
  method = evaluate.Method('model', resolve(config), path, 0, 16, 0)
  a = evaluate.evaluate_volume(truth, [method], config)['arrays']
  assert a['orientation'] == 'ras'
  zoom = evaluate._zoom_region(np.abs(a['bicubic'] - a['hr']))
  expected = report.image_grid(a['lr'], a['bicubic'], a['sr'], a['hr'], zoom=zoom, orientation='ras')
  figure = np.asarray(Image.open(tmp_path / 'r' / '000_brain.png').convert('RGB'))
  np.testing.assert_array_equal(figure, expected)
  lay = report.grid_layout(a['hr'].shape, zoom, orientation='ras')
  assert lay.panel_shape[0] == a['hr'].shape[1] * lay.display_factor >= report.MIN_PANEL  # turned: W rows
  truth = evaluate.read_truth(inputs / 'stack.npy', resolve(config).data)
  assert evaluate.evaluate_volume(truth, [method], config)['arrays']['orientation'] == 'stored'


def test_errors_are_one_line_and_outputs_are_protected(identity, inputs, tmp_path):
  config, path = identity
  quiet = {'log': lambda *_: None}
  with pytest.raises(evaluate.EvaluateError, match='--scale 4 does not match .* model.scale 2'):
    evaluate.evaluate(config, path, [inputs], scale=4, **quiet)
  with pytest.raises(evaluate.EvaluateError, match='nope.nii: no such input'):
    evaluate.evaluate(config, path, [tmp_path / 'nope.nii'], **quiet)
  (tmp_path / 'x.txt').write_text('x')
  with pytest.raises(evaluate.EvaluateError, match='x.txt: unknown input suffix'):
    evaluate.evaluate(config, path, [tmp_path / 'x.txt'], **quiet)
  (tmp_path / 'taken.json').write_text('keep')
  with pytest.raises(evaluate.EvaluateError, match='taken.json: exists; pass --overwrite'):
    evaluate.evaluate(config, path, [inputs / 'stack.npy'], json_path=tmp_path / 'taken.json', **quiet)
  assert (tmp_path / 'taken.json').read_text() == 'keep'
  with pytest.raises(evaluate.EvaluateError, match='is an input file'):
    evaluate.evaluate(config, path, [inputs / 'stack.npy'], json_path=inputs / 'stack.npy', overwrite=True, **quiet)
  with pytest.raises(evaluate.EvaluateError, match='holds input files'):
    evaluate.evaluate(config, path, [inputs / 'stack.npy'], report_dir=inputs, overwrite=True, **quiet)
  np.save(tmp_path / 'bad.npy', np.full((2, 16, 16), np.nan, np.float32))
  with pytest.raises(evaluate.EvaluateError, match='bad.npy: has non-finite values'):
    evaluate.evaluate(config, path, [tmp_path / 'bad.npy'], **quiet)
  with pytest.raises(network_variables.WeightsError, match='shape mismatch|does not fit|missing'):
    evaluate.evaluate(_config('edsr', 'x2,quick'), path, [inputs / 'stack.npy'], **quiet)
  with pytest.raises(network_variables.WeightsError, match='--step applies to a training workdir, not a state_dict'):
    evaluate.evaluate(config, path, [inputs / 'stack.npy'], step='latest', **quiet)
  with pytest.raises(evaluate.EvaluateError, match='scale 4 does not match'):
    evaluate.evaluate(
      config, path, [inputs / 'stack.npy'], baselines=[f'{path}@{REPO / "configs" / "srcnn.py"}:quick'], **quiet
    )


@pytest.mark.integration  # subprocess
def test_cli_stops_with_one_line_on_a_scale_mismatch(identity, inputs, tmp_path):
  """(--help is checked for every entry point in test_cli_help.py.)"""
  config, path = identity
  # timeout: a hang guard, not a speed test (this run takes a few seconds)
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'mrisr_jax.evaluate',
      '--config',
      'configs/srcnn.py:x2,quick',
      '--weights',
      str(path),
      '--input',
      str(inputs / 'stack.npy'),
      '--scale',
      '3',
      '--json',
      str(tmp_path / 'o.json'),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 2 and 'Traceback' not in run.stderr  # a user error: exit 2 (issue 13)
  assert run.stderr.strip().splitlines()[-1].startswith('mrisr_jax: error: --scale 3 does not match')
  assert not (tmp_path / 'o.json').exists()
