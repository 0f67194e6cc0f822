"""mrisr_jax.sdt_centroids: TransMRSR's SDT centroids. k-means follows sklearn's Lloyd (random rows, relative
tol, empty-cluster relocation, best of n_init) and agrees with a plain Lloyd loop; standardisation maps the
centres back to w's units; both file layouts round-trip; sample_latents depends on the seed only.

sklearn is not a dependency (and not installed where this was written), so there is no sklearn comparison."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from mrisr_jax import sdt_centroids as sdt
from mrisr_jax.errors import UserError

pytestmark = pytest.mark.unit


def blobs(seed=0, k=4, per=100, d=6, spread=10.0, std=0.3):
  """k well-separated Gaussian blobs: (x, true labels, true centres)."""
  rs = np.random.RandomState(seed)
  centres = rs.uniform(-spread, spread, size=(k, d))
  labels = np.repeat(np.arange(k), per)
  x = centres[labels] + std * rs.randn(k * per, d)
  perm = rs.permutation(len(x))
  return x[perm].astype(np.float32), labels[perm], centres


def relabel(found, true):
  """The map found label -> true label, asserting it is one-to-one and explains every point."""
  pairs = {(f, t) for f, t in zip(found.tolist(), true.tolist())}
  mapping = dict(pairs)
  assert len(mapping) == len(pairs) == len(set(mapping.values())), 'labels are not a relabelling of the truth'
  return mapping


def plain_lloyd(x, centres, tol, max_iter):
  """sklearn's _kmeans_single_lloyd written plainly in float64 (no empty clusters expected)."""
  x = np.asarray(x, np.float64)
  c = np.asarray(centres, np.float64)
  abs_tol = tol * np.mean(np.var(x, axis=0))
  labels_old = np.full(len(x), -1)
  for _ in range(max_iter):
    labels = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    new = np.stack([x[labels == j].mean(axis=0) for j in range(len(c))])
    shift = ((new - c) ** 2).sum()
    c = new
    if np.array_equal(labels, labels_old) or shift <= abs_tol:
      break
    labels_old = labels
  labels = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
  return c, labels, ((x - c[labels]) ** 2).sum()


# ------------------------------------------------------------------------------------ kmeans


def test_kmeans_recovers_well_separated_blobs():
  x, true, centres = blobs()
  c, labels, inertia = sdt.kmeans(x, 4, seed=0)
  assert c.shape == (4, 6) and c.dtype == np.float32
  assert labels.shape == (400,) and labels.dtype == np.int32
  mapping = relabel(labels, true)  # every point in its own blob
  for f, t in mapping.items():
    np.testing.assert_allclose(c[f], x[true == t].mean(axis=0), rtol=1e-5, atol=1e-5)  # the blob's mean
    np.testing.assert_allclose(c[f], centres[t], atol=0.15)  # the generating centre
  direct = ((x.astype(np.float64) - c[labels]) ** 2).sum()
  assert inertia == pytest.approx(direct, rel=1e-6)


def test_kmeans_from_given_centres_matches_a_plain_lloyd_loop():
  """Overlapping clusters, so the stopping rule (relative tol, max_iter) changes the result."""
  rs = np.random.RandomState(1)
  x = (rs.randn(300, 5) * [3, 1, 1, 0.5, 2] + 7).astype(np.float32)
  settings = [(1e-4, 300), (0.0, 300), (0.01, 300), (1e-4, 3)]
  differs = {s: False for s in settings}
  for _ in range(3):
    init = x[rs.permutation(len(x))[:5]]
    found = {}
    for tol, max_iter in settings:
      c, labels, inertia = sdt.kmeans(x, 5, max_iter=max_iter, tol=tol, init=init)
      ref_c, ref_labels, ref_inertia = plain_lloyd(x, init, tol, max_iter)
      np.testing.assert_array_equal(labels, ref_labels)
      np.testing.assert_allclose(c, ref_c, rtol=1e-5, atol=1e-5)
      assert inertia == pytest.approx(ref_inertia, rel=1e-6)
      found[tol, max_iter] = labels
    for s in settings:
      differs[s] |= not np.array_equal(found[s], found[0.0, 300])
  assert differs[0.01, 300] and differs[1e-4, 3]  # the data make the stopping rule matter


def test_kmeans_keeps_the_best_run_from_sklearns_random_rows():
  """n_init runs start from RandomState(seed).permutation(n)[:k], drawn in turn; the lowest inertia wins."""
  x, _, _ = blobs(seed=2, k=6, per=30, spread=3.0, std=1.0)
  rs = np.random.RandomState(5)
  singles = [sdt.kmeans(x, 6, init=x[rs.permutation(len(x))[:6]]) for _ in range(4)]
  c, labels, inertia = sdt.kmeans(x, 6, n_init=4, seed=5)
  best = min(singles, key=lambda r: r[2])
  assert inertia == pytest.approx(best[2], rel=1e-12)
  assert inertia <= min(r[2] for r in singles) * (1 + 1e-12)
  again = sdt.kmeans(x, 6, n_init=4, seed=5)
  np.testing.assert_array_equal(again[0], c)
  np.testing.assert_array_equal(again[1], labels)


def test_kmeans_tol_is_relative_to_the_data_variance():
  """Scaling x by 1024 (exact in floating point) scales the centres and keeps the labels, with a tol large
  enough to stop the runs early: the stopping rule scales with the data."""
  rs = np.random.RandomState(3)
  x = rs.randn(500, 4).astype(np.float32)
  c, labels, inertia = sdt.kmeans(x, 6, tol=1e-2, seed=1)
  c2, labels2, inertia2 = sdt.kmeans(x * 1024, 6, tol=1e-2, seed=1)
  np.testing.assert_array_equal(labels2, labels)
  np.testing.assert_allclose(c2, c * 1024, rtol=1e-5, atol=1e-3)
  assert inertia2 == pytest.approx(inertia * 1024**2, rel=1e-9)


def test_kmeans_reseeds_an_empty_cluster_with_the_farthest_point():
  x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
  c, labels, inertia = sdt.kmeans(x, 2, init=[[0.0], [100.0]])  # no point is nearer to 100
  np.testing.assert_allclose(c, [[1.0], [10.0]], atol=1e-6)
  np.testing.assert_array_equal(labels, [0, 0, 0, 1])
  assert inertia == pytest.approx(2.0)


def test_kmeans_reseeds_empty_clusters_farthest_point_first():
  """Two empty clusters: the farthest point (30) seeds the lower index, the next (20) the other."""
  x = np.array([[0.0], [1.0], [2.0], [3.0], [20.0], [30.0]], np.float32)
  c, labels, _ = sdt.kmeans(x, 3, init=[[1.0], [100.0], [200.0]])
  np.testing.assert_allclose(c, [[1.5], [30.0], [20.0]], atol=1e-6)
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 2, 1])


@pytest.mark.parametrize(
  ('x', 'k', 'kwargs', 'message'),
  [
    (np.zeros(5), 1, {}, '2-D'),
    (np.zeros((3, 2)), 4, {}, 'k must be'),
    (np.zeros((3, 2)), 0, {}, 'k must be'),
    (np.array([[0.0, np.nan], [1.0, 1.0]]), 1, {}, 'NaN'),
    (np.zeros((3, 2)), 2, {'init': np.zeros((2, 3))}, 'init must have shape'),
    (np.zeros((3, 2)), 2, {'n_init': 0}, 'n_init'),
  ],
)
def test_kmeans_rejects_bad_arguments(x, k, kwargs, message):
  with pytest.raises(ValueError, match=message):
    sdt.kmeans(x, k, **kwargs)


def test_standardised_kmeans_returns_centres_in_the_original_units():
  z, true, _ = blobs(seed=4, k=3, per=50, d=4, spread=3.0, std=0.1)
  scale = np.array([1e-3, 1.0, 1e3, 5.0])
  offset = np.array([100.0, -2.0, 0.0, 1e4])
  w = np.concatenate([z * scale + offset, np.full((len(z), 1), 7.0)], axis=1)  # plus a constant feature
  c, labels, inertia = sdt.standardised_kmeans(w, 3, seed=0)
  assert c.shape == (3, 5) and c.dtype == np.float32
  mapping = relabel(labels, true)
  for f, t in mapping.items():
    np.testing.assert_allclose(c[f], w[true == t].mean(axis=0), rtol=1e-5)  # in w's units
  np.testing.assert_array_equal(c[:, 4], 7.0)  # zero std counts as 1: the constant stays
  # the same as k-means on the standardised data, mapped back
  mean, std = w.mean(axis=0), w.std(axis=0)
  std[4] = 1.0
  c2, labels2, inertia2 = sdt.kmeans((w - mean) / std, 3, seed=0)
  np.testing.assert_array_equal(labels2, labels)
  np.testing.assert_allclose(c2 * std + mean, c, rtol=1e-5)
  assert inertia2 == pytest.approx(inertia, rel=1e-6)


# ------------------------------------------------------------------------------------ files


def test_save_and_load_round_trip_both_layouts(tmp_path):
  centres = np.random.RandomState(0).randn(8, 16).astype(np.float32)
  npy, folder = sdt.save_centroids(tmp_path / 'sdt', centres)
  assert npy == tmp_path / 'sdt' / 'centroids.npy'
  assert folder == tmp_path / 'sdt' / 'pure_centroids'
  names = sorted(p.name for p in folder.iterdir())
  assert names == [f'centroid_{i:03d}-8clusters.npy' for i in range(8)]
  for i, name in enumerate(names):
    row = np.load(folder / name)
    assert row.shape == (16,) and row.dtype == np.float32
    np.testing.assert_array_equal(row, centres[i])
  for path in (npy, folder, str(folder)):
    loaded = sdt.load_centroids(path, num_centroids=8, style_dim=16)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, centres)


def test_load_reads_a_folder_in_name_order_and_skips_other_files(tmp_path):
  rows = np.eye(3, dtype=np.float64)
  for i in (2, 0, 1):  # created out of order
    np.save(tmp_path / f'c{i}.npy', rows[i])
  (tmp_path / 'notes.txt').write_text('not a centroid')
  (tmp_path / 'sub.npy.d').mkdir()  # a folder, even with 'npy' in its name, is not a centroid file
  loaded = sdt.load_centroids(tmp_path)
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, rows)


def make_bad(tmp_path, case):
  if case == 'missing':
    return tmp_path / 'nowhere'
  if case == 'empty folder':
    (tmp_path / 'e').mkdir()
    (tmp_path / 'e' / 'notes.txt').write_text('x')
    return tmp_path / 'e'
  if case == 'mixed shapes':
    np.save(tmp_path / 'a.npy', np.zeros(4, np.float32))
    np.save(tmp_path / 'b.npy', np.zeros(5, np.float32))
    return tmp_path
  if case == 'save folder':  # centroids.npy is (k, d): the per-centroid files are in pure_centroids/
    sdt.save_centroids(tmp_path / 's', np.zeros((2, 3), np.float32))
    return tmp_path / 's'
  if case == '1-D file':
    np.save(tmp_path / 'c.npy', np.zeros(4, np.float32))
    return tmp_path / 'c.npy'
  if case == 'not npy':
    (tmp_path / 'c.npy').write_text('hello')
    return tmp_path / 'c.npy'
  if case == 'integers':
    np.save(tmp_path / 'c.npy', np.zeros((2, 3), np.int64))
    return tmp_path / 'c.npy'
  if case == 'nan':
    np.save(tmp_path / 'c.npy', np.full((2, 3), np.nan, np.float32))
    return tmp_path / 'c.npy'
  raise AssertionError(case)


@pytest.mark.parametrize(
  ('case', 'message'),
  [
    ('missing', 'not found'),
    ('empty folder', 'no centroid files'),
    ('mixed shapes', 'same shape'),
    ('save folder', 'same shape'),
    ('1-D file', 'shape \\(k, d\\)'),
    ('not npy', 'cannot read'),
    ('integers', 'float array'),
    ('nan', 'NaN'),
  ],
)
def test_load_errors_are_one_line_and_name_the_path(tmp_path, case, message):
  path = make_bad(tmp_path, case)
  with pytest.raises(sdt.CentroidsError, match=message) as e:
    sdt.load_centroids(path)
  assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)
  assert str(path) in str(e.value) and '\n' not in str(e.value)


def test_load_checks_the_expected_count_and_dimension(tmp_path):
  npy, _ = sdt.save_centroids(tmp_path, np.zeros((8, 4), np.float32))
  with pytest.raises(sdt.CentroidsError, match=re.escape(f'{npy}: 8 centroids, expected 6')):
    sdt.load_centroids(npy, num_centroids=6)
  with pytest.raises(sdt.CentroidsError, match='dimension 4, expected 512'):
    sdt.load_centroids(npy, style_dim=512)


# ------------------------------------------------------------------------------------ latents


@jax.jit
def affine(z):
  return 2.0 * z + 1.0


def test_sample_latents_depend_on_the_seed_only():
  w = sdt.sample_latents(affine, 37, 5, seed=3)
  assert w.shape == (37, 5) and w.dtype == np.float32
  for batch in (1, 7, 37, 4096):
    np.testing.assert_array_equal(sdt.sample_latents(affine, 37, 5, seed=3, batch=batch), w)
  # row i: z_i = normal(fold_in(PRNGKey(seed), i)), then the mapping
  key = jax.random.PRNGKey(3)
  for i in (0, 9, 36):
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (5,)))
    np.testing.assert_allclose(w[i], 2.0 * z + 1.0, rtol=1e-6)
  assert not np.allclose(sdt.sample_latents(affine, 37, 5, seed=4), w)


def test_sample_latents_calls_the_mapping_with_full_batches():
  shapes = []

  def mapping(z):
    shapes.append(z.shape)
    return affine(z)

  sdt.sample_latents(mapping, 10, 3, seed=0, batch=4)
  assert shapes == [(4, 3)] * 3  # 10 rows: the last batch is completed to 4 and cut back
  shapes.clear()
  sdt.sample_latents(mapping, 3, 3, seed=0, batch=4096)
  assert shapes == [(3, 3)]


def test_sample_latents_rejects_a_mapping_of_the_wrong_shape():
  with pytest.raises(ValueError, match=re.escape('expected (4, 3)')):
    sdt.sample_latents(jax.jit(lambda z: z[:, :2]), 4, 3, seed=0)
