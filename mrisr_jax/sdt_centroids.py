"""TransMRSR's self-distilled truncation (SDT): the k-means centroids of the prior's W space.

The public code (T:componets/gen/multi3.py) draws N latents z ~ N(0, I), maps them with the generator's
mapping network (w = G.style(z)), standardises w (sklearn StandardScaler), clusters the scaled w with
`KMeans(n_clusters=K, random_state=0, init='random')` (sklearn 1.2.2: n_init=10, max_iter=300, tol=1e-4,
Lloyd) and maps the centres back to W (`scaler.inverse_transform`). The paper uses N = 60,000, K = 8.

Here, without sklearn:

- `sample_latents`: z from jax.random, w = mapping_fn(z), in batches;
- `kmeans`: Lloyd's algorithm with sklearn's semantics (random init choosing the same rows as sklearn for
  the same seed, relative tol, empty-cluster relocation, best of n_init by inertia); it agrees with sklearn
  in what it computes, not bit for bit (float32 distances as sklearn's on float32 w, float64 sums and
  centres, another order of operations); the n_init runs go side by side, one matrix product per iteration;
- `standardised_kmeans`: StandardScaler + kmeans + inverse transform, as multi3.py;
- `save_centroids` / `load_centroids`: one (k, d) `.npy`, or the public per-centroid layout
  (`centroid_{i:03d}-{K}clusters.npy`, each (d,)) that TGP7's `truncation_path` reads.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mrisr_jax import fileio
from mrisr_jax.errors import UserError

CENTROIDS_FILE = 'centroids.npy'  # the (k, d) array
PER_CENTROID_DIR = 'pure_centroids'  # the public layout, as test.sh's '...-8clusters-pure_centroids'


class CentroidsError(UserError, ValueError):
  """A centroid file or folder that cannot be read as (k, d) centroids (one line naming the path)."""


# ------------------------------------------------------------------------------------ latents


@functools.partial(jax.jit, static_argnames=('batch', 'style_dim'))
def _draw_z(key: jax.Array, start: jax.Array, batch: int, style_dim: int) -> jax.Array:
  """Rows start .. start+batch-1; row i is jax.random.normal(fold_in(key, i), (style_dim,))."""
  rows = start + jnp.arange(batch, dtype=jnp.uint32)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (style_dim,), jnp.float32))(rows)


def sample_latents(
  mapping_fn: Callable[[jax.Array], jax.Array], n: int, style_dim: int, seed: int, batch: int = 4096
) -> np.ndarray:
  """w = mapping_fn(z) for n latents z ~ N(0, I): an (n, style_dim) float32 array.

  Row i of z is `jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), (style_dim,))`, one key
  per row, so z (and w) depend on the seed only, never on `batch` (a memory knob). mapping_fn (a jitted
  z -> w, (b, style_dim) -> (b, style_dim)) always sees full batches of min(batch, n) rows, so it compiles
  once; the last batch is completed with rows n, n+1, ... (also N(0, I)) whose w are dropped. It must map
  each row on its own (as the StyleGAN/StyleSwin mapping: PixelNorm + MLP), which padding relies on.
  """
  if n < 1 or style_dim < 1 or batch < 1:
    raise ValueError(f'sample_latents: n, style_dim and batch must be positive (got {n}, {style_dim}, {batch})')
  batch = min(batch, n)
  key = jax.random.PRNGKey(seed)
  out = np.empty((n, style_dim), np.float32)
  for start in range(0, n, batch):
    w = np.asarray(mapping_fn(_draw_z(key, jnp.uint32(start), batch, style_dim)), dtype=np.float32)
    if w.shape != (batch, style_dim):
      raise ValueError(f'sample_latents: mapping_fn returned shape {w.shape}, expected {(batch, style_dim)}')
    m = min(batch, n - start)
    out[start : start + m] = w[:m]
  return out


# ------------------------------------------------------------------------------------ k-means


@jax.jit
def _assign(x: jax.Array, centers: jax.Array) -> jax.Array:
  """Nearest centre of each row (first on ties) for R runs at once: x (n, d), centers (R, k, d) -> (R, n).

  One (R*k, d) @ (d, n) product for all runs (the k = 8 columns of one run use the CPU poorly) and the
  argmin of |c|^2 / 2 - c.x (|x - c|^2 less |x|^2, halved) fused with it.
  """
  r, k, d = centers.shape
  c = centers.reshape(r * k, d)
  dots = jnp.dot(c, x.T, precision=jax.lax.Precision.HIGHEST)  # no TF32 passes on accelerators
  scores = 0.5 * jnp.sum(c * c, axis=1)[:, None] - dots
  return jnp.argmin(scores.reshape(r, k, -1), axis=1).astype(jnp.int32)


class _Run:
  """One Lloyd run (sklearn's _kmeans_single_lloyd): its centres, labels, and the cluster sums and counts
  of those labels (float64), kept up to date from the points that change label."""

  def __init__(self, centers: np.ndarray):
    self.centers = centers  # (k, d) float64
    self.labels = None
    self.sums = self.counts = None
    self.n_iter = 0
    self.done = False

  def set_labels(self, x: np.ndarray, labels: np.ndarray) -> int:
    """New labels; returns how many points changed cluster (all of them the first time)."""
    k = len(self.centers)
    if self.labels is None:
      self.sums = np.stack([x[labels == j].sum(axis=0, dtype=np.float64) for j in range(k)])
      self.counts = np.bincount(labels, minlength=k).astype(np.float64)
      self.labels = labels
      return len(labels)
    rows = np.flatnonzero(labels != self.labels)
    if rows.size:
      moved, old, new = x[rows], self.labels[rows], labels[rows]
      for j in np.unique(np.concatenate([old, new])):
        self.sums[j] += moved[new == j].sum(axis=0, dtype=np.float64) - moved[old == j].sum(axis=0, dtype=np.float64)
      self.counts += np.bincount(new, minlength=k) - np.bincount(old, minlength=k)
      self.labels = labels
    return int(rows.size)

  def step(self, x: np.ndarray, x_sq: np.ndarray, labels: np.ndarray, tol: float, max_iter: int) -> None:
    """One iteration given the labels assigned with the current centres: move the centres to the means,
    then stop on strict convergence (no label changed), a total squared shift <= tol, or max_iter."""
    first = self.labels is None
    strict = self.set_labels(x, labels) == 0 and not first
    sums, counts = self.sums.copy(), self.counts.copy()
    empty = np.flatnonzero(counts == 0)
    if empty.size:
      # sklearn's _relocate_empty_clusters_dense: the points farthest from their own centre (the centres
      # these labels were assigned with) seed the empty clusters and leave their own clusters' sums for this
      # update; labels do not change. sklearn takes the same points (argpartition); here the farthest seeds
      # the empty cluster of lowest index, and so on.
      c = self.centers[labels]
      own = x_sq - 2.0 * np.einsum('ij,ij->i', x, c) + np.sum(c * c, axis=1)
      for j, p in zip(empty, np.argsort(-own, kind='stable')[: empty.size]):
        sums[labels[p]] -= x[p]
        counts[labels[p]] -= 1
        sums[j], counts[j] = x[p], 1
    # sklearn's _average_centers leaves a zero-weight cluster at its (zero) sum
    new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], sums)
    shift = float(np.sum((new - self.centers) ** 2))
    self.centers = new
    self.n_iter += 1
    self.done = strict or shift <= tol or self.n_iter >= max_iter

  def inertia(self, x_sq_total: float) -> float:
    """Sum of squared distances to the assigned centres: sum |x|^2 - 2 c.S + n |c|^2 (float64)."""
    c = self.centers
    return max(0.0, x_sq_total - 2.0 * float(np.sum(c * self.sums)) + float(np.sum(self.counts * np.sum(c * c, 1))))


def _lloyd(x: np.ndarray, starts: list[np.ndarray], tol: float, max_iter: int) -> list[_Run]:
  """Lloyd runs from each start, as sklearn's _kmeans_single_lloyd, side by side: each iteration assigns
  labels with the current centres (one batched product for the runs still going) and moves the centres to
  the means; after the loop the labels are assigned once more with the final centres (sklearn's E-step)."""
  xj = jnp.asarray(x)
  x_sq = np.sum(x.astype(np.float64) ** 2, axis=1)
  runs = [_Run(c) for c in starts]
  active = runs
  while active:
    labels = np.asarray(_assign(xj, jnp.asarray(np.stack([r.centers for r in active]), jnp.float32)))
    for r, lab in zip(active, labels):
      r.step(x, x_sq, lab, tol, max_iter)
    active = [r for r in runs if not r.done]
  labels = np.asarray(_assign(xj, jnp.asarray(np.stack([r.centers for r in runs]), jnp.float32)))
  for r, lab in zip(runs, labels):
    r.set_labels(x, lab)
  return runs


def _same_clustering(a: np.ndarray, b: np.ndarray) -> bool:
  """sklearn's _is_same_clustering: b is a function of a (the same partition up to a relabelling)."""
  pairs = np.unique(np.stack([a, b], axis=1), axis=0)
  return len(pairs) == len(np.unique(a))


def kmeans(
  x,
  k: int,
  n_init: int = 10,
  max_iter: int = 300,
  tol: float = 1e-4,
  seed: int = 0,
  *,
  init=None,
) -> tuple[np.ndarray, np.ndarray, float]:
  """Lloyd's k-means, as sklearn's `KMeans(k, init='random', n_init, max_iter, tol, random_state=seed)`.

  - init='random': each run starts from k distinct rows, `np.random.RandomState(seed).permutation(n)[:k]`
    (one RandomState for all runs, drawn in turn: the rows sklearn picks for the same seed); or `init`,
    a (k, d) array of starting centres, which makes it one run (sklearn: n_init=1 with an explicit init);
  - tol is relative: a run stops when the total squared centre shift is <= tol * mean(var(x, axis=0)), or
    when no label changes (strict convergence), or after max_iter iterations;
  - an empty cluster is reseeded with the point farthest from its own centre (sklearn's relocation);
  - the best run by inertia is kept; a later run replaces it only when its inertia is lower and its
    clustering differs (sklearn >= 1.1);
  - x is centred (as sklearn) and stored as float32; the distances are float32 (as sklearn on float32 w),
    the cluster sums, centres and inertia float64. The runs go side by side (one matrix product per
    iteration for all of them).

  Returns (centers (k, d) float32, labels (n,) int32, inertia (float)).
  """
  centers, labels, inertia = _kmeans(x, k, n_init, max_iter, tol, seed, init)
  return centers.astype(np.float32), labels, inertia


def _kmeans(x, k, n_init, max_iter, tol, seed, init) -> tuple[np.ndarray, np.ndarray, float]:
  """kmeans with float64 centres."""
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f'kmeans: x must be a non-empty 2-D array, got shape {x.shape}')
  n, d = x.shape
  if not 1 <= k <= n:
    raise ValueError(f'kmeans: k must be in [1, {n}] (the number of rows), got {k}')
  if n_init < 1 or max_iter < 1 or tol < 0:
    raise ValueError(f'kmeans: need n_init >= 1, max_iter >= 1, tol >= 0 (got {n_init}, {max_iter}, {tol})')
  x64 = x.astype(np.float64)
  if not np.all(np.isfinite(x64)):
    raise ValueError('kmeans: x has NaN or infinite values')
  mean = x64.mean(axis=0)
  abs_tol = float(np.mean(np.var(x64, axis=0))) * tol
  xc = (x64 - mean).astype(np.float32)
  del x64
  if init is not None:
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (k, d):
      raise ValueError(f'kmeans: init must have shape {(k, d)}, got {init.shape}')
    starts = [init - mean]
  else:
    rs = np.random.RandomState(seed)
    starts = [xc[rs.permutation(n)[:k]].astype(np.float64) for _ in range(n_init)]

  runs = _lloyd(xc, starts, abs_tol, max_iter)
  x_sq_total = float(np.sum(xc.astype(np.float64) ** 2))
  best = None
  for i, run in enumerate(runs):
    inertia = run.inertia(x_sq_total)
    logging.info('kmeans run %d: %d iterations, inertia %.6g', i, run.n_iter, inertia)
    if best is None or (inertia < best[2] and not _same_clustering(run.labels, best[1])):
      best = (run.centers, run.labels, inertia)
  c, labels, inertia = best
  if len(np.unique(labels)) < k:
    logging.warning('kmeans: %d distinct clusters, fewer than k=%d (duplicate points?)', len(np.unique(labels)), k)
  return c + mean, labels.astype(np.int32), inertia


def standardised_kmeans(
  w, k: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
  """k-means of StandardScaler(w), centres mapped back to w's units, as multi3.py.

  The scaler uses each feature's mean and population std (ddof=0), in float64; a std below 10 * float64
  eps (a constant feature) counts as 1, as sklearn. Returns (centers (k, d) float32 in w's units, labels,
  inertia in the standardised space, as sklearn's `KMeans.inertia_` there).
  """
  w64 = np.asarray(w, dtype=np.float64)
  if w64.ndim != 2:
    raise ValueError(f'standardised_kmeans: w must be 2-D, got shape {w64.shape}')
  mean = w64.mean(axis=0)
  std = w64.std(axis=0)
  std = np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std)
  centers, labels, inertia = _kmeans((w64 - mean) / std, k, n_init, max_iter, tol, seed, None)
  return (centers * std + mean).astype(np.float32), labels, inertia


# ------------------------------------------------------------------------------------ files


def save_centroids(directory, centers) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `directory/centroids.npy` ((k, d) float32) and the public per-centroid layout
  `directory/pure_centroids/centroid_{i:03d}-{k}clusters.npy` (each (d,) float32).

  The per-centroid files get a folder of their own because the public loader stacks every file in its
  `truncation_path` whose name contains 'npy', so `centroids.npy` beside them would break it. Returns the
  two paths that `load_centroids` (and, for the folder, TGP7's truncation_path) accept.
  """
  c = np.asarray(centers, dtype=np.float32)
  if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
    raise ValueError(f'save_centroids: centers must be a non-empty (k, d) array, got shape {c.shape}')
  directory = pathlib.Path(directory)
  npy = fileio.write_npy(directory / CENTROIDS_FILE, c)
  folder = directory / PER_CENTROID_DIR
  for i, row in enumerate(c):
    fileio.write_npy(folder / f'centroid_{i:03d}-{len(c)}clusters.npy', row)
  return npy, folder


def _read(path: pathlib.Path) -> np.ndarray:
  try:
    a = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise CentroidsError(f'cannot read centroids from {path}: {e}') from e
  if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
    raise CentroidsError(f'{path}: expected a float array, got {getattr(a, "dtype", type(a).__name__)}')
  return a


def load_centroids(path, *, num_centroids: int | None = None, style_dim: int | None = None) -> np.ndarray:
  """(k, d) float32 centroids from a `.npy` file of shape (k, d) or a folder of per-centroid files.

  A folder is read as TGP7 does: every file whose name contains 'npy', each of shape (d,), stacked; here in
  sorted name order, where the public code uses os.listdir order (arbitrary, file-system dependent). The
  order does not change SDT's output (each latent takes the nearest or farthest centroid) except on ties.
  num_centroids / style_dim, when given, must match. Anything else raises CentroidsError naming the path.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    names = sorted(n for n in os.listdir(path) if 'npy' in n and (path / n).is_file())
    if not names:
      raise CentroidsError(f'no centroid files (names containing "npy") in {path}')
    rows = [_read(path / n) for n in names]
    shapes = {r.shape for r in rows}
    if len(shapes) != 1 or len(rows[0].shape) != 1:
      listed = ', '.join(f'{n} {r.shape}' for n, r in zip(names, rows))
      raise CentroidsError(f'the centroid files in {path} must all have the same shape (d,): {listed}')
    c = np.stack(rows)
  elif path.is_file():
    c = _read(path)
    if c.ndim != 2:
      raise CentroidsError(f'{path}: expected centroids of shape (k, d), got {c.shape}')
  else:
    raise CentroidsError(f'centroids not found: {path} (a (k, d) .npy file or a folder of per-centroid .npy files)')
  if c.shape[0] < 1 or c.shape[1] < 1:
    raise CentroidsError(f'{path}: empty centroids, shape {c.shape}')
  if num_centroids is not None and c.shape[0] != num_centroids:
    raise CentroidsError(f'{path}: {c.shape[0]} centroids, expected {num_centroids}')
  if style_dim is not None and c.shape[1] != style_dim:
    raise CentroidsError(f'{path}: centroids of dimension {c.shape[1]}, expected {style_dim}')
  if not np.all(np.isfinite(c)):
    raise CentroidsError(f'{path}: centroids have NaN or infinite values')
  return c.astype(np.float32)
