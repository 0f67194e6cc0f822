"""Tests of the data layer on tiny fixture files (mrisr_jax.data.*)."""

from __future__ import annotations

import pathlib
import pickle

import grain
import h5py
import ml_collections
import numpy as np
import pytest

from mrisr_jax.data import degrade
from mrisr_jax.data import fastmri
from mrisr_jax.data import fastmri_files
from mrisr_jax.data import pipeline
from mrisr_jax.data import sample
from mrisr_jax.data.errors import DataError

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def write_h5(path: pathlib.Path, attrs: dict | None = None, **datasets) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, 'w') as f:
    for key, value in datasets.items():
      f.create_dataset(key, data=value)
    for key, value in (attrs or {}).items():
      f.attrs[key] = value
  return path


def np_ifft2c(k):
  """fastMRI ifft2c written out directly in numpy (independent of the module)."""
  return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm='ortho'), axes=(-2, -1))


def random_recon(rng, shape, scale=1.0):
  return (rng.random(shape) * scale).astype(np.float32)


def data_cfg(root, **overrides):
  cfg = ml_collections.ConfigDict(
    dict(
      root=str(root),
      train_split='train',
      val_split='val',
      target_key='auto',
      hr_patch_size=8,
      flips=True,
      num_workers=0,
      prefetch_buffer=2,
      skip_bad_files=False,
      val_max_volumes=0,
      val_max_slices=0,
    )
  )
  cfg.update(overrides)
  return cfg


def assert_one_line(err: BaseException, *needles):
  msg = str(err)
  assert '\n' not in msg, msg
  for needle in needles:
    assert str(needle) in msg, f'{needle!r} not in {msg!r}'


def stored_target(path) -> np.ndarray:
  """The target a fastMRI-layout file stores: reconstruction_rss (multi-coil) or _esc (single-coil)."""
  with h5py.File(path) as f:
    return f['reconstruction_rss' if 'reconstruction_rss' in f else 'reconstruction_esc'][()]


@pytest.fixture
def train_root(tmp_path):
  """Two train volumes (5 + 4 slices of 16 x 12) and one val volume (7 slices), in fastMRI's layouts:
  a and v single-coil (reconstruction_esc), b multi-coil (one coil, reconstruction_rss)."""
  rng = np.random.default_rng(0)
  write = fastmri_files.write_volume
  write(tmp_path / 'train' / 'a.h5', target=random_recon(rng, (5, 16, 12), 3e-4), challenge='singlecoil')
  write(tmp_path / 'train' / 'b.h5', target=random_recon(rng, (4, 16, 12), 50.0), challenge='multicoil')
  write(tmp_path / 'val' / 'v.h5', target=random_recon(rng, (7, 16, 12), 2.0), challenge='singlecoil')
  return tmp_path


@pytest.fixture
def indexed_root(tmp_path):
  """One train volume of 12 constant slices: slice k has value (k + 1) / 12 (max 1)."""
  values = (np.arange(12, dtype=np.float32) + 1) / 12
  recon = np.broadcast_to(values[:, None, None], (12, 8, 8)).astype(np.float32)
  fastmri_files.write_volume(tmp_path / 'train' / 'idx.h5', target=recon)
  return tmp_path


def slice_ids(batch_hr):
  """Slice numbers of constant-valued crops from `indexed_root`."""
  means = batch_hr.reshape(batch_hr.shape[0], -1).mean(axis=1)
  ids = np.rint(means * 12).astype(int) - 1
  np.testing.assert_allclose(means, (ids + 1) / 12, atol=1e-6)
  return ids.tolist()


def take(it, n):
  return [next(it) for _ in range(n)]


def batches_equal(a, b):
  return all(np.array_equal(x['hr'], y['hr']) and np.array_equal(x['lr'], y['lr']) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------------
# targets, RSS, scaling
# ----------------------------------------------------------------------------------------------
def test_rss_single_coil_kspace_matches_numpy(tmp_path):
  rng = np.random.default_rng(1)
  k = (rng.normal(size=(3, 10, 9)) + 1j * rng.normal(size=(3, 10, 9))).astype(np.complex64)
  path = write_h5(tmp_path / 'sc.h5', kspace=k)
  src = fastmri.FastMRISliceSource([path])
  assert src.volumes[0].metadata['target'] == 'kspace'
  expected = np.abs(np_ifft2c(k.astype(np.complex128)))
  vmax = expected.max()
  assert src.volumes[0].metadata['max'] == pytest.approx(vmax, rel=1e-5)
  for s in range(3):
    item = src[s]
    assert item['image'].dtype == np.float32 and item['image'].shape == (10, 9)
    np.testing.assert_allclose(item['image'], expected[s] / vmax, atol=1e-6)
    assert item['volume'] == 'sc' and item['slice'] == s


def test_rss_multi_coil_kspace_matches_numpy(tmp_path):
  rng = np.random.default_rng(2)
  k = (rng.normal(size=(2, 4, 8, 6)) + 1j * rng.normal(size=(2, 4, 8, 6))).astype(np.complex64)
  path = write_h5(tmp_path / 'mc.h5', kspace=k)
  src = fastmri.FastMRISliceSource([path])
  coils = np_ifft2c(k.astype(np.complex128))
  expected = np.sqrt((np.abs(coils) ** 2).sum(axis=1))
  np.testing.assert_allclose(fastmri.rss_from_kspace(k), expected, rtol=1e-5)
  for s in range(2):
    np.testing.assert_allclose(src[s]['image'], expected[s] / expected.max(), atol=1e-6)
  assert len(src) == 2


def test_target_selection_order(tmp_path):
  rng = np.random.default_rng(3)
  rss = random_recon(rng, (2, 6, 6))
  esc = random_recon(rng, (2, 6, 6))
  k = np.fft.fft2(random_recon(rng, (2, 6, 6))).astype(np.complex64)
  all3 = write_h5(tmp_path / 'all3.h5', reconstruction_rss=rss, reconstruction_esc=esc, kspace=k)
  esc_k = write_h5(tmp_path / 'esck.h5', reconstruction_esc=esc, kspace=k)
  k_only = write_h5(tmp_path / 'k.h5', kspace=k)
  src = fastmri.FastMRISliceSource([all3, esc_k, k_only])
  assert [v.metadata['target'] for v in src.volumes] == ['reconstruction_rss', 'reconstruction_esc', 'kspace']
  np.testing.assert_allclose(src[0]['image'], rss[0] / rss.max(), rtol=1e-6)
  np.testing.assert_allclose(src[2]['image'], esc[0] / esc.max(), rtol=1e-6)
  explicit = fastmri.FastMRISliceSource([all3], target_key='reconstruction_esc')
  assert explicit.volumes[0].metadata['target'] == 'reconstruction_esc'
  np.testing.assert_allclose(explicit[1]['image'], esc[1] / esc.max(), rtol=1e-6)
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([k_only], target_key='reconstruction_rss')
  assert_one_line(err.value, k_only, 'reconstruction_rss', 'kspace')
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([k_only], target_key='recon')
  assert_one_line(err.value, 'target_key', 'recon')


def test_per_volume_scaling_to_unit_range(train_root):
  files = fastmri.list_volume_files(train_root, 'train')
  assert [p.name for p in files] == ['a.h5', 'b.h5']
  src = fastmri.FastMRISliceSource(files)
  assert len(src) == 9 and [v.num_slices for v in src.volumes] == [5, 4]
  assert [v.metadata['target'] for v in src.volumes] == ['reconstruction_esc', 'reconstruction_rss']
  for v, path in enumerate(files):
    raw = stored_target(path)
    assert src.volumes[v].metadata['max'] == pytest.approx(float(raw.max()))
    images = src.read_volume(v)
    assert images.dtype == np.float32 and images.shape == raw.shape
    assert images.min() >= 0 and images.max() == pytest.approx(1.0)
    np.testing.assert_allclose(images, raw / raw.max(), rtol=1e-6)
  # flat index -> (volume, slice)
  assert src[5]['volume'] == 'b' and src[5]['slice'] == 0
  assert src[-1]['volume'] == 'b' and src[-1]['slice'] == 3
  with pytest.raises(IndexError):
    src[9]


def test_source_pickles_without_handles(train_root):
  src = fastmri.FastMRISliceSource(fastmri.list_volume_files(train_root, 'train'))
  first = src[3]['image']
  assert src._handles  # opened lazily by the read above
  clone = pickle.loads(pickle.dumps(src))
  assert clone._handles == {}
  np.testing.assert_array_equal(clone[3]['image'], first)
  assert [v.name for v in clone.volumes] == ['a', 'b']


def test_file_attrs_are_kept(tmp_path):
  path = fastmri_files.write_volume(
    tmp_path / 'x.h5', attrs={'max': 7.0, 'acquisition': 'AXT1'}, target=np.ones((1, 4, 4), np.float32)
  )
  vol = fastmri.FastMRISliceSource([path]).volumes[0]
  assert vol.metadata['attrs']['acquisition'] == 'AXT1' and vol.metadata['attrs']['max'] == 7.0
  assert vol.metadata['max'] == 1.0  # computed from the data, not taken from attrs


# ----------------------------------------------------------------------------------------------
# degradations
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape,scale', [((12, 8), 2), ((2, 3, 12, 16), 4), ((9, 6), 3)])
def test_area_downsample_is_block_mean(shape, scale):
  x = np.random.default_rng(4).random(shape).astype(np.float32)
  h, w = shape[-2] // scale, shape[-1] // scale
  ref = np.zeros(shape[:-2] + (h, w), np.float64)
  for i in range(h):
    for j in range(w):
      ref[..., i, j] = x[..., i * scale : (i + 1) * scale, j * scale : (j + 1) * scale].mean(axis=(-2, -1))
  out = degrade.area_downsample(x, scale)
  assert out.dtype == np.float32 and out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_area_downsample_rejects_indivisible_shape():
  with pytest.raises(ValueError) as err:
    degrade.area_downsample(np.zeros((10, 7), np.float32), 2)
  assert_one_line(err.value, '(10, 7)', 'scale 2')


@pytest.mark.parametrize('shape,scale', [((1, 1, 7, 5), 2), ((2, 1, 12, 10), 3), ((1, 3, 24, 20), 4)])
def test_bicubic_upsample_matches_torch(shape, scale):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(5).random(shape).astype(np.float32)
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(x), scale_factor=scale, mode='bicubic', align_corners=False
  ).numpy()
  out = degrade.bicubic_upsample(x, scale)
  assert out.dtype == np.float32 and out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5)
  # also on a 2-D array
  np.testing.assert_allclose(degrade.bicubic_upsample(x[0, 0], scale), ref[0, 0], atol=1e-5)


def test_bicubic_resize_matches_torch_non_integer():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(6).random((1, 1, 9, 11)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(20, 17), mode='bicubic', align_corners=False).numpy()
  np.testing.assert_allclose(degrade.bicubic_resize(x, 20, 17), ref, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# training pipeline
# ----------------------------------------------------------------------------------------------
def make_ds(root, seed=0, batch=4, pi=0, pc=1, scale=2, start=0, **cfg):
  return pipeline.make_train_dataset(
    data_cfg(root, **cfg),
    scale=scale,
    global_batch_size=batch,
    seed=seed,
    process_index=pi,
    process_count=pc,
    start=start,
  )[0]


def test_batches_have_the_documented_shapes(train_root):
  it = iter(make_ds(train_root, batch=4, scale=2, hr_patch_size=8))
  b = next(it)
  assert set(b) == {'lr', 'hr'}
  assert b['hr'].shape == (4, 8, 8, 1) and b['hr'].dtype == np.float32
  assert b['lr'].shape == (4, 4, 4, 1) and b['lr'].dtype == np.float32
  assert 0 <= b['hr'].min() and b['hr'].max() <= 1
  np.testing.assert_allclose(b['lr'][..., 0], degrade.area_downsample(b['hr'][..., 0], 2), atol=1e-7)
  assert pipeline.num_train_slices(data_cfg(train_root)) == 9


def test_crops_come_from_the_slices(train_root):
  """Without flips every HR patch is a window of some scaled slice."""
  src = fastmri.FastMRISliceSource(fastmri.list_volume_files(train_root, 'train'))
  slices = [src[i]['image'] for i in range(len(src))]
  b = next(iter(make_ds(train_root, batch=6, flips=False, hr_patch_size=6)))
  for patch in b['hr'][..., 0]:
    found = any(np.array_equal(img[y : y + 6, x : x + 6], patch) for img in slices for y in range(11) for x in range(7))
    assert found


def test_same_seed_same_batches_different_seed_different(train_root):
  a = take(iter(make_ds(train_root, seed=3)), 4)
  b = take(iter(make_ds(train_root, seed=3)), 4)
  c = take(iter(make_ds(train_root, seed=4)), 4)
  assert batches_equal(a, b)
  assert not any(np.array_equal(x['hr'], y['hr']) for x, y in zip(a, c))


def test_iterator_state_restore(train_root):
  ds = make_ds(train_root, seed=7)
  it = iter(ds)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 2)
  it2 = iter(make_ds(train_root, seed=7))
  it2.set_state(state)
  assert batches_equal(take(it2, 2), expected)


def test_iterator_checkpoint_with_orbax(train_root, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  it = iter(make_ds(train_root, seed=9))
  take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('ds',)) as mgr:
    mgr.save(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  expected = take(it, 2)
  it2 = iter(make_ds(train_root, seed=9))
  with ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('ds',)) as mgr:
    mgr.restore(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(it2)))
  assert batches_equal(take(it2, 2), expected)


def test_two_processes_cover_each_epoch_exactly_once(indexed_root):
  # 12 slices, 2 processes, global batch 6 -> local batch 3, 2 batches per host per epoch.
  seen = {}
  for pi in (0, 1):
    it = iter(make_ds(indexed_root, seed=11, batch=6, pi=pi, pc=2, hr_patch_size=4))
    ids = [slice_ids(b['hr']) for b in take(it, 4)]
    epoch0 = ids[0] + ids[1]
    epoch1 = ids[2] + ids[3]
    order = pipeline.host_slice_order(12, seed=11, start=0, count=12, local_batch=3, process_index=pi, process_count=2)
    assert epoch0 + epoch1 == order
    seen[pi] = (epoch0, epoch1)
  for epoch in (0, 1):
    both = seen[0][epoch] + seen[1][epoch]
    assert sorted(both) == list(range(12))
  assert seen[0][0] + seen[1][0] != seen[0][1] + seen[1][1]  # reshuffled per epoch
  assert seen[0][0] + seen[1][0] != list(range(12))  # shuffled at all


def test_uneven_slice_count_still_covers_every_epoch_once():
  # 13 slices over 3 hosts (global batch 3): hosts take turns along one global stream, so each
  # epoch is read once in all, whatever the process count.
  orders = [
    pipeline.host_slice_order(13, seed=1, start=0, count=13, local_batch=1, process_index=pi, process_count=3)
    for pi in range(3)
  ]
  stream = [orders[k % 3][k // 3] for k in range(39)]
  for epoch in range(3):
    assert sorted(stream[13 * epoch : 13 * (epoch + 1)]) == list(range(13))
  assert stream == pipeline.host_slice_order(13, seed=1, start=0, count=39, local_batch=3)


def test_global_batches_do_not_depend_on_the_process_count(indexed_root):
  """Elastic resume: from any global position, the processes' local batches side by side (process
  order, as the global array is assembled) are exactly the 1-process global batch."""
  batch, start = 8, 20
  one = take(iter(make_ds(indexed_root, seed=2, batch=batch, hr_patch_size=4, start=start)), 3)
  assert not batches_equal(one, take(iter(make_ds(indexed_root, seed=2, batch=batch, hr_patch_size=4)), 3))
  for pc in (2, 4):
    shares = [
      take(iter(make_ds(indexed_root, seed=2, batch=batch, pi=pi, pc=pc, hr_patch_size=4, start=start)), 3)
      for pi in range(pc)
    ]
    for b in range(3):
      for key in ('lr', 'hr'):
        np.testing.assert_array_equal(np.concatenate([s[b][key] for s in shares]), one[b][key])


@pytest.mark.integration  # grain worker processes
def test_multiprocess_workers_give_the_same_batches(indexed_root):
  a = take(iter(make_ds(indexed_root, seed=5, batch=4, hr_patch_size=4)), 4)
  it = iter(make_ds(indexed_root, seed=5, batch=4, hr_patch_size=4, num_workers=2))
  try:
    b = take(it, 4)
  finally:
    it.close()
  assert batches_equal(a, b)


def test_validation_volumes(train_root):
  vols = pipeline.load_validation_volumes(data_cfg(train_root))
  assert [v['name'] for v in vols] == ['v']
  raw = stored_target(train_root / 'val' / 'v.h5')
  np.testing.assert_allclose(vols[0]['hr'], raw / raw.max(), rtol=1e-6)
  assert vols[0]['hr'].dtype == np.float32
  limited = pipeline.load_validation_volumes(data_cfg(train_root, val_max_slices=3))
  assert limited[0]['slices'] == [0, 3, 6]
  np.testing.assert_allclose(limited[0]['hr'], raw[[0, 3, 6]] / raw.max(), rtol=1e-6)
  two = pipeline.load_validation_volumes(data_cfg(train_root, val_split='train', val_max_volumes=1))
  assert [v['name'] for v in two] == ['a']


# ----------------------------------------------------------------------------------------------
# bad inputs: one-line DataErrors naming the file / key / value
# ----------------------------------------------------------------------------------------------
def test_missing_root_and_split_dirs(tmp_path):
  with pytest.raises(DataError) as err:
    sample.resolve_data_root(str(tmp_path / 'nope'))
  assert_one_line(err.value, tmp_path / 'nope')
  assert sample.resolve_data_root('') == (sample.SAMPLE_DIR, True)
  assert sample.resolve_data_root(str(tmp_path)) == (tmp_path, False)
  with pytest.raises(DataError) as err:
    fastmri.list_volume_files(tmp_path, 'train')
  assert_one_line(err.value, tmp_path / 'train', 'no .h5 files')
  with pytest.raises(DataError) as err:
    pipeline.num_train_slices(data_cfg(tmp_path / 'nope'))
  assert_one_line(err.value, tmp_path / 'nope')


def test_empty_split_dir(tmp_path):
  (tmp_path / 'train').mkdir()
  (tmp_path / 'train' / 'notes.txt').write_text('x')
  with pytest.raises(DataError) as err:
    fastmri.list_volume_files(tmp_path, 'train')
  assert_one_line(err.value, tmp_path / 'train', 'no .h5 files')


def test_hdf5_suffix_is_listed(tmp_path):
  fastmri_files.write_volume(tmp_path / 'train' / 'b.hdf5', target=np.ones((1, 2, 2), np.float32))
  fastmri_files.write_volume(tmp_path / 'train' / 'a.h5', target=np.ones((1, 2, 2), np.float32))
  assert [p.name for p in fastmri.list_volume_files(tmp_path, 'train')] == ['a.h5', 'b.hdf5']


def test_non_hdf5_file(tmp_path):
  bad = tmp_path / 'train' / 'bad.h5'
  bad.parent.mkdir()
  bad.write_bytes(b'this is not an HDF5 file' * 10)
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([bad])
  assert_one_line(err.value, bad, 'HDF5')


def test_truncated_file(tmp_path):
  rng = np.random.default_rng(8)
  path = fastmri_files.write_volume(tmp_path / 'trunc.h5', target=random_recon(rng, (4, 32, 32)))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path])
  assert_one_line(err.value, path)


def test_missing_keys_name_the_keys_present(tmp_path):
  path = write_h5(tmp_path / 'nokeys.h5', image=np.ones((1, 4, 4), np.float32), mask=np.ones(4, np.float32))
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path])
  assert_one_line(err.value, path, 'reconstruction_rss', "'image'", "'mask'")


@pytest.mark.parametrize(
  'key,value,shape',
  [
    ('reconstruction_rss', np.ones((4, 4), np.float32), '(4, 4)'),
    ('reconstruction_esc', np.ones((1, 1, 4, 4), np.float32), '(1, 1, 4, 4)'),
    ('kspace', np.ones((4, 4), np.complex64), '(4, 4)'),
    ('kspace', np.ones((1, 1, 1, 4, 4), np.complex64), '(1, 1, 1, 4, 4)'),
  ],
)
def test_wrong_rank(tmp_path, key, value, shape):
  path = write_h5(tmp_path / 'rank.h5', **{key: value})
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path])
  assert_one_line(err.value, path, key, shape)


def test_wrong_dtype(tmp_path):
  path = write_h5(tmp_path / 'realk.h5', kspace=np.ones((1, 4, 4), np.float32))
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path])
  assert_one_line(err.value, path, 'kspace', 'complex')


@pytest.mark.parametrize(
  'key,bad', [('reconstruction_rss', np.nan), ('reconstruction_rss', np.inf), ('kspace', np.nan)]
)
def test_non_finite_values(tmp_path, key, bad):
  dtype = np.complex64 if key == 'kspace' else np.float32
  value = np.ones((3, 4, 4), dtype)
  value[2, 1, 1] = bad
  path = write_h5(tmp_path / 'nonfinite.h5', **{key: value})
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([path])
  assert_one_line(err.value, path, key, 'non-finite', 'slice 2')


def test_zero_and_negative_volumes(tmp_path):
  zero = write_h5(tmp_path / 'zero.h5', reconstruction_rss=np.zeros((2, 4, 4), np.float32))
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([zero])
  assert_one_line(err.value, zero, 'maximum')
  neg = np.ones((2, 4, 4), np.float32)
  neg[0, 0, 0] = -1
  negp = write_h5(tmp_path / 'neg.h5', reconstruction_rss=neg)
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([negp])
  assert_one_line(err.value, negp, 'negative')


def test_crop_larger_than_image(train_root):
  with pytest.raises(DataError) as err:
    make_ds(train_root, hr_patch_size=20, scale=2)
  assert_one_line(err.value, train_root / 'train' / 'a.h5', '(16, 12)', '20x20')


def test_crop_not_divisible_by_scale(train_root):
  with pytest.raises(DataError) as err:
    make_ds(train_root, hr_patch_size=6, scale=4)
  assert_one_line(err.value, 'hr_patch_size', '6', '4')


def test_batch_not_divisible_by_processes(train_root):
  with pytest.raises(DataError) as err:
    make_ds(train_root, batch=5, pi=0, pc=2)
  assert_one_line(err.value, 'global_batch_size', '5', '2')


def test_skip_bad_files_counts_and_skips(train_root, monkeypatch):
  bad1 = train_root / 'train' / 'c_garbage.h5'
  bad1.write_bytes(b'garbage')
  bad2 = write_h5(train_root / 'train' / 'd_nan.h5', reconstruction_rss=np.full((2, 16, 12), np.nan, np.float32))
  files = fastmri.list_volume_files(train_root, 'train')
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource(files)
  assert_one_line(err.value, bad1)
  logged = []
  monkeypatch.setattr(fastmri.logging, 'warning', lambda *args: logged.append(args))
  src = fastmri.FastMRISliceSource(files, skip_bad_files=True)
  assert [v.name for v in src.volumes] == ['a', 'b'] and len(src) == 9
  assert [p for p, _ in src.skipped] == [bad1, bad2]
  assert str(bad2) in src.skipped[1][1] and 'non-finite' in src.skipped[1][1]
  assert len(logged) == 1 and logged[0][1] == 2
  # the pipeline honours the flag too
  assert pipeline.num_train_slices(data_cfg(train_root, skip_bad_files=True)) == 9
  with pytest.raises(DataError):
    pipeline.num_train_slices(data_cfg(train_root, skip_bad_files=False))
  # all bad -> still an error
  with pytest.raises(DataError) as err:
    fastmri.FastMRISliceSource([bad1, bad2], skip_bad_files=True)
  assert_one_line(err.value, 'no usable volumes')
