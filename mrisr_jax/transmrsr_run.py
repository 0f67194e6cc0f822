"""TransMRSR's three stages as one job or separately (configs/transmrsr.py, `config.transmrsr.stage`):

  prior      train the StyleSwin prior (mrisr_jax.prior_train) in WORKDIR, then its SDT centroids
             in WORKDIR/centroids (mrisr_jax.sdt_centroids)
  sr         train the SR network in WORKDIR (mrisr_jax.train) with its decoder restored from a prior:
             config.transmrsr.prior_workdir (a stage-1 run: its EMA generator and centroids) or
             config.transmrsr.prior_weights (a public StyleSwin checkpoint's g_ema; torch needed)
  all        prior in WORKDIR/prior, then SR in WORKDIR/sr from it

Each part resumes from its own checkpoints, so rerunning an interrupted `all` job picks up where it
stopped (a finished prior is not retrained; its centroids are not recomputed).
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging

from mrisr_jax import prior_train
from mrisr_jax.errors import ConfigError

CENTROIDS_DIR = 'centroids'
CENTROIDS_FILE = 'centroids.npy'


def run(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False) -> dict:
  from mrisr_jax import train

  t = config.transmrsr
  if t.stage not in ('all', 'prior', 'sr'):
    raise ConfigError(f'config.transmrsr.stage={t.stage!r} must be all, prior or sr')
  root = pathlib.Path(workdir)
  if t.stage == 'prior':
    return train_prior_and_centroids(config, root)
  if t.stage == 'all':
    prior_dir = root / 'prior'
    train_prior_and_centroids(config, prior_dir)
    with config.unlocked():
      config.transmrsr.prior_workdir = str(prior_dir)
    root = root / 'sr'
    logging.info('TransMRSR: stage 2 (SR) in %s from the prior in %s', root, prior_dir)
  if not t.prior_workdir and not t.prior_weights:
    raise ConfigError(
      'config.transmrsr.prior_workdir and prior_weights are both empty: stage=sr needs a stage-1 run '
      '(configs/transmrsr.py:stage=prior) or a StyleSwin checkpoint'
    )
  if t.freeze_decoder:
    with config.unlocked():
      config.lr_multipliers['generator'] = 0.0
  return train.train_and_evaluate(config, str(root), allow_config_change=allow_config_change)


def train_prior_and_centroids(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  metrics = prior_train.train_prior(config, str(workdir))
  if jax.process_index() == 0:
    compute_centroids(config.prior, workdir, config.seed)
  return metrics


def compute_centroids(p: ml_collections.ConfigDict, prior_workdir: pathlib.Path, seed: int = 0, force: bool = False):
  """k-means centroids of the prior's mapping outputs (the reference's multi3.py) in
  PRIOR/centroids: kept when they were computed from the same checkpoint step with the same settings."""
  from mrisr_jax import sdt_centroids

  out = pathlib.Path(prior_workdir) / CENTROIDS_DIR
  step, ema = prior_train.restore_ema(p, prior_workdir, seed)
  settings = {'step': int(step), 'n': int(p.centroid_samples), 'k': int(p.n_centroids), 'seed': int(p.centroid_seed)}
  meta_path = out / 'centroids.json'
  if not force and meta_path.exists() and json.loads(meta_path.read_text()) == settings:
    logging.info('SDT centroids: kept %s (step %d)', out, step)
    return out / CENTROIDS_FILE
  g, _ = prior_train.build_models(p)
  mapping = jax.jit(lambda z: g.apply({'params': ema}, z, method=g.mapping))
  w = sdt_centroids.sample_latents(mapping, int(p.centroid_samples), int(p.style_dim), int(p.centroid_seed))
  centers, _, inertia = sdt_centroids.standardised_kmeans(w, int(p.n_centroids), seed=int(p.centroid_seed))
  sdt_centroids.save_centroids(out, centers)
  meta_path.write_text(json.dumps(settings))
  logging.info(
    'SDT centroids: %d from %d mapped latents of prior step %d (inertia %.4g) in %s',
    p.n_centroids,
    p.centroid_samples,
    step,
    inertia,
    out,
  )
  return out / CENTROIDS_FILE


def prior_synthesis(config: ml_collections.ConfigDict) -> tuple[dict, str]:
  """(the prior's synthesis params, where they came from) for the SR decoder."""
  t = config.transmrsr
  if t.prior_workdir:
    step, ema = prior_train.restore_ema(config.prior, t.prior_workdir, config.seed)
    return ema['synthesis'], f'{t.prior_workdir} (EMA generator, step {step})'
  from mrisr_jax import import_torch

  return import_torch.styleswin_synthesis(t.prior_weights, config.prior), f'{t.prior_weights} (g_ema)'


def centroids_path(config: ml_collections.ConfigDict) -> str:
  t = config.transmrsr
  if t.centroids:
    return t.centroids
  if t.prior_workdir:
    return str(pathlib.Path(t.prior_workdir) / CENTROIDS_DIR / CENTROIDS_FILE)
  return ''


def _check_like(name: str, got, want) -> None:
  got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
  want_shapes = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(want)[0]}
  got_shapes = {jax.tree_util.keystr(p): np.shape(x) for p, x in got_leaves}
  for key in sorted(set(want_shapes) | set(got_shapes)):
    if want_shapes.get(key) != got_shapes.get(key):
      raise ConfigError(
        f'{name}: the prior does not fit the SR decoder at {key}: {got_shapes.get(key, "missing")} vs '
        f'{want_shapes.get(key, "absent")} (config.model and config.prior must agree on size, style_dim, channels)'
      )


def init_from_prior(config: ml_collections.ConfigDict, state, state_sharding):
  """A fresh SR state with the decoder taken from the prior and the SDT centroids loaded."""
  from mrisr_jax import sdt_centroids

  synthesis, source = prior_synthesis(config)
  _check_like(source, synthesis, state.g_params['generator'])
  g_params = dict(state.g_params)
  g_params['generator'] = jax.device_put(synthesis, state_sharding.g_params['generator'])
  state = state.replace(g_params=g_params)
  logging.info('TransMRSR: decoder restored from %s', source)
  if config.model.sdt == 'off':
    return state
  path = centroids_path(config)
  if not path:
    raise ConfigError(
      f'config.model.sdt={config.model.sdt!r} needs centroids: set config.transmrsr.centroids (a .npy or a '
      'folder of centroid_*.npy) or config.model.sdt=off'
    )
  centers = sdt_centroids.load_centroids(path)
  want = state.g_batch_stats['sdt']['centroids'].shape
  if centers.shape != want:
    raise ConfigError(
      f'{path}: centroids of shape {centers.shape}, the SR network needs {want} (model.n_centroids, style_dim)'
    )
  stats = {
    **state.g_batch_stats,
    'sdt': {'centroids': jax.device_put(centers, state_sharding.g_batch_stats['sdt']['centroids'])},
  }
  logging.info(
    'TransMRSR: %d SDT centroids from %s (%s, psi %.2f)', len(centers), path, config.model.sdt, config.model.psi
  )
  return state.replace(g_batch_stats=stats)
