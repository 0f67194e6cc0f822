"""TransMRSR's self-distilled truncation centroids from a trained stage-1 prior (the public code's
componets/gen/multi3.py): sample N latents z ~ N(0, I), map them with the prior's EMA mapping network,
standardise, k-means (K clusters, best of 10 random inits), map the centres back, and write them into
the prior run (PRIOR/centroids: centroids.npy (K, style_dim) and the public per-centroid files in
pure_centroids/). Training a prior (`stage=prior` or `all`) already does this with config.prior's N and K;
run this tool to recompute them with other settings.

  python tools/transmrsr_centroids.py --config configs/transmrsr.py --prior runs/prior [--samples 60000]
      [--clusters 8] [--seed 0]

The SR stage reads PRIOR/centroids/centroids.npy (config.transmrsr.prior_workdir), or any file or folder
given as --config.transmrsr.centroids.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrisr_jax import cli  # noqa: E402


def main() -> None:
  from mrisr_jax import transmrsr_run
  from mrisr_jax.errors import ConfigError

  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/transmrsr.py', help=cli.CONFIG_HELP)
  parser.add_argument('--prior', required=True, help='a stage-1 (prior) training workdir')
  parser.add_argument('--samples', type=int, help='latents to sample (default: config.prior.centroid_samples)')
  parser.add_argument('--clusters', type=int, help='k-means clusters K (default: config.prior.n_centroids)')
  parser.add_argument('--seed', type=int, help='latent and k-means seed (default: config.prior.centroid_seed)')
  a, overrides = cli.tool_args(parser)  # --config.KEY=VALUE as the entry points take them
  config = cli.load_config(a.config, overrides, lock=False)
  if 'prior' not in config:
    raise ConfigError(f'{a.config}: the config has no prior section: use configs/transmrsr.py')
  p = config.prior
  for key, value in (('centroid_samples', a.samples), ('n_centroids', a.clusters), ('centroid_seed', a.seed)):
    if value is not None:
      p[key] = value
  path = transmrsr_run.compute_centroids(p, pathlib.Path(a.prior), config.seed, force=True)
  print(f'wrote {path} ({p.n_centroids} centroids of {p.centroid_samples} mapped latents, seed {p.centroid_seed})')


if __name__ == '__main__':
  cli.guard(main)
