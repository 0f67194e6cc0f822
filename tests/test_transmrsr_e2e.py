"""TransMRSR end to end as users run it: the quick recipe trains the prior, its centroids and the SR
network on the embedded sample in one job; the SR stage starts from that prior; the trained network
super-resolves a thick-slice NIfTI through-plane and is scored against bicubic and cubic spline."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import run_main

pytestmark = pytest.mark.e2e
# a guard against hangs, not a speed check (several times the measured run on 2 idle cores)
TIMEOUT = 3600
CONFIG = 'configs/transmrsr.py:quick'
# the quick recipe shortened for CI: every stage still runs to its end (docs/models.md has the full quick run)
SHORT = (
  '--config.prior.steps=30',
  '--config.prior.checkpoint_every_steps=30',
  '--config.prior.centroid_samples=1000',
  '--config.stages.sr.epochs=6',
)


def test_quick_job_trains_prior_centroids_and_sr_then_infers_through_plane(tmp_path):
  work = tmp_path / 'run'
  proc = run_main('--config', CONFIG, '--workdir', str(work), *SHORT, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  log = proc.stderr
  # stage 1 ran to its end, then the centroids, then stage 2 from that prior
  prior_steps = sorted(int(p.name) for p in (work / 'prior' / 'checkpoints').iterdir() if p.name.isdigit())
  assert prior_steps[-1] == 30
  centroids = np.load(work / 'prior' / 'centroids' / 'centroids.npy')
  assert centroids.shape == (8, 64) and np.isfinite(centroids).all()
  assert len(list((work / 'prior' / 'centroids' / 'pure_centroids').glob('centroid_*-8clusters.npy'))) == 8
  assert list((work / 'prior' / 'images').glob('prior_samples_*.png'))
  assert f'decoder restored from {work / "prior"} (EMA generator, step 30)' in log
  assert 'SDT centroids from' in log
  sr = work / 'sr'
  sr_steps = sorted(int(p.name) for p in (sr / 'checkpoints').iterdir() if p.name.isdigit())
  assert sr_steps[-1] == 6 * 4  # 6 epochs x (36 training slices // batch 8)
  metrics = json.loads((sr / 'report' / 'metrics.json').read_text())['summary']
  assert np.isfinite(metrics['model']['psnr']) and metrics['model']['psnr'] > 20, metrics
  # rerunning the finished job trains nothing again: the prior, its centroids and the SR run are kept
  again = run_main('--config', CONFIG, '--workdir', str(work), *SHORT, timeout=TIMEOUT)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'SDT centroids: kept' in again.stderr and 'new run' not in again.stderr

  # through-plane: a scan with 4 mm thick slices along x becomes the 1 mm grid
  thick = tmp_path / 'thick.nii.gz'
  scan = run_main(
    '--out', str(thick), '--scale', '4', '--degradation', 'thick:axis=1,profile=box', module='tools/sample_scan.py'
  )
  assert scan.returncode == 0, scan.stderr[-2000:]
  out_path = tmp_path / 'iso.nii.gz'
  inf = run_main(
    '--config', CONFIG, *SHORT, '--weights', str(sr), '--input', str(thick), '--output', str(out_path),
    '--thick_axis', '1', module='mrisr_jax.infer', timeout=TIMEOUT,
  )  # fmt: skip
  assert inf.returncode == 0, inf.stderr[-3000:]
  src, out = nib.load(thick), nib.load(out_path)
  assert src.shape == (192, 42, 8) and out.shape == (192, 168, 8)
  np.testing.assert_allclose(out.header.get_zooms(), (1, 1, 2))
  # voxel centres: the first fine voxel along x sits 1.5 mm before the first thick voxel's centre
  np.testing.assert_allclose(out.affine[:3, :3], src.affine[:3, :3] @ np.diag([1, 0.25, 1]), atol=1e-6)
  np.testing.assert_allclose(out.affine[:3, 3], src.affine[:3, 3] - src.affine[:3, 1] * 0.375, atol=1e-5)
  assert np.isfinite(np.asarray(out.dataobj)).all()

  ev = run_main(
    '--config', CONFIG, *SHORT, '--weights', str(sr), '--input', 'mrisr_jax/sample_data/val', '--json',
    str(tmp_path / 'eval.json'), module='mrisr_jax.evaluate', timeout=TIMEOUT,
  )  # fmt: skip
  assert ev.returncode == 0, ev.stderr[-3000:]
  scores = json.loads((tmp_path / 'eval.json').read_text())['mean']
  assert {'model', 'bicubic', 'spline'} <= set(scores), scores
  assert 'spline PSNR' in ev.stdout

  # the centroid tool recomputes them from the trained prior with other settings
  tool = run_main(
    '--config', CONFIG, '--prior', str(work / 'prior'), '--samples', '500', '--clusters', '4',
    module='tools/transmrsr_centroids.py', timeout=TIMEOUT,
  )  # fmt: skip
  assert tool.returncode == 0, tool.stderr[-2000:]
  assert np.load(work / 'prior' / 'centroids' / 'centroids.npy').shape == (4, 64)
