"""The fastmri_slices TFDS dataset (ArrayRecord) and data.format=tfds: the same samples as the h5 source."""

import dataclasses
import pathlib
import pickle
import re
import shutil

import h5py
import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')  # the [tfds] extra; .ci/run installs it

from mrisr_jax.data import fastmri, sample, splits, tfds_fastmri, tfds_source  # noqa: E402
from mrisr_jax.data.errors import DataError  # noqa: E402
from mrisr_jax.spec import data_spec  # noqa: E402
from tests.helpers import REPO, error_line, run_main, tiny_config  # noqa: E402

HEADER = (
  '<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
  '<encoding><encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>'
  '<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace></encoding></ismrmrdHeader>'
)


def _multicoil_kspace_file(path: pathlib.Path, slices=5, coils=3, shape=(72, 64), recon=(56, 56), acq='CORPD_FBK'):
  """A multi-coil volume with k-space only (the target is the RSS cropped to the header's recon size)."""
  rng = np.random.default_rng(7)
  yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / np.array(shape).reshape(2, 1, 1)
  images = np.stack(
    [[(1 + np.sin(6 * xx + s + c)) * (1 + yy) * (c + 1) for c in range(coils)] for s in range(slices)]
  ) * np.exp(1j * rng.uniform(0, 2 * np.pi, (slices, coils, 1, 1)))
  with h5py.File(path, 'w') as f:
    f.create_dataset('kspace', data=fastmri.fft2c(images).astype(np.complex64))
    f.create_dataset('ismrmrd_header', data=HEADER.format(ex=shape[0], ey=shape[1], rx=recon[0], ry=recon[1]))
    f.attrs['acquisition'] = acq
    f.attrs['patient_id'] = path.stem


def _manual_dir(root: pathlib.Path) -> pathlib.Path:
  """The embedded sample (train/, val/) plus a k-space-only multi-coil fixture in train/."""
  src, _ = sample.resolve_data_root('')
  shutil.copytree(src / 'train', root / 'train')
  shutil.copytree(src / 'val', root / 'val')
  _multicoil_kspace_file(root / 'train' / 'knee_fixture_mc.h5')
  return root


def _build(manual: pathlib.Path, data_dir: pathlib.Path, config='folder', **kwargs):
  builder = tfds.builder(f'fastmri_slices/{config}', data_dir=str(data_dir), **kwargs)
  builder.download_and_prepare(
    file_format='array_record',
    download_dir=data_dir / 'downloads',
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
  )
  return builder


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  manual = _manual_dir(root / 'manual')
  _build(manual, root / 'tfds', num_workers=2)  # worker processes read the files
  h5 = data_spec(dict(root=str(manual), hr_patch_size=48))
  tf = dataclasses.replace(h5, format='tfds', tfds_dir=str(root / 'tfds'), tfds_name='fastmri_slices/folder')
  return manual, root / 'tfds', h5, tf


def _assert_same_samples(h5, tf, split):
  try:
    a, _ = splits.make_source(h5, split)
  except DataError as err:  # a filter that leaves nothing: the tfds source refuses it the same way
    with pytest.raises(DataError, match=re.escape(str(err).split(': ', 1)[1].split(' (first')[0])):
      splits.make_source(tf, split)
    return None, None
  b, _ = splits.make_source(tf, split)
  assert [v.name for v in a.volumes] == [v.name for v in b.volumes]
  assert [(v.num_slices, v.shape) for v in a.volumes] == [(v.num_slices, v.shape) for v in b.volumes]
  assert [v.metadata['max'] for v in a.volumes] == [v.metadata['max'] for v in b.volumes]
  assert len(a) == len(b) > 0
  for i in range(len(a)):
    x, y = a[i], b[i]
    assert (x['volume'], x['slice']) == (y['volume'], y['slice'])
    np.testing.assert_array_equal(x['image'], y['image'])  # bit-identical normalised slices
  return a, b


@pytest.mark.unit
def test_every_slice_equals_the_h5_source_in_both_splits(built):
  _, _, h5, tf = built
  a, b = _assert_same_samples(h5, tf, 'train')
  assert 'knee_fixture_mc' in [v.name for v in b.volumes]  # k-space-only volume: RSS cropped to 56 x 56
  assert b.volumes[[v.name for v in b.volumes].index('knee_fixture_mc')].shape == (56, 56)
  _assert_same_samples(h5, tf, 'val')
  b2 = pickle.loads(pickle.dumps(b))  # grain workers get a pickled source: it reopens the records
  np.testing.assert_array_equal(b2[len(b) - 1]['image'], a[len(a) - 1]['image'])


@pytest.mark.unit
@pytest.mark.parametrize(
  'change',
  [
    dict(val_fraction=0.4),
    dict(volume_sample_rate=0.5),
    dict(acquisitions=('CORPD_FBK',)),
    dict(acquisitions=('AXT1',)),
  ],
)
def test_filters_and_splits_select_the_same_volumes(built, change):
  _, _, h5, tf = built
  for split in ('train', 'val'):
    _assert_same_samples(dataclasses.replace(h5, **change), dataclasses.replace(tf, **change), split)


@pytest.mark.unit
def test_the_same_training_batches_for_the_same_seed(built):
  from mrisr_jax.data import pipeline

  _, _, h5, tf = built
  batches = []
  for data in (h5, tf):
    ds, _ = pipeline.make_train_dataset(
      dataclasses.replace(data, degradation=('bicubic', 'noise:snr=30')),
      scale=4,
      global_batch_size=4,
      seed=3,
      process_index=0,
      process_count=1,
    )
    it = iter(ds)
    batches.append([next(it) for _ in range(3)])
  for x, y in zip(*batches):
    np.testing.assert_array_equal(x['hr'], y['hr'])
    np.testing.assert_array_equal(x['lr'], y['lr'])


@pytest.mark.unit
def test_startup_reads_the_volume_table_not_the_records(built, monkeypatch):
  _, _, _, tf = built

  def no_reads(*args, **kwargs):
    raise AssertionError('a record was read at start-up')

  monkeypatch.setattr(tfds_source.TfdsSliceSource, '_data_source', no_reads)
  source, _ = splits.make_source(tf, 'train')
  assert len(source) == 18 + 18 + 5


@pytest.mark.unit
def test_one_line_errors_for_datasets_that_do_not_fit(built, tmp_path):
  _, data_dir, _, tf = built
  with pytest.raises(DataError, match='not built there.*tools/build_tfds.py'):
    splits.make_source(dataclasses.replace(tf, tfds_dir=str(tmp_path)), 'train')
  with pytest.raises(DataError, match='data.tfds_name: empty'):
    splits.make_source(dataclasses.replace(tf, tfds_name=''), 'train')
  with pytest.raises(DataError, match="data.val_split='test' is not a split of the dataset"):
    splits.make_source(dataclasses.replace(tf, val_split='test'), 'val')
  with pytest.raises(
    DataError, match="data.target_key='reconstruction_rss' but the dataset stores 'reconstruction_esc'"
  ):
    splits.make_source(dataclasses.replace(tf, target_key='reconstruction_rss'), 'val')
  with pytest.raises(DataError, match='data.crop_to_recon_size=False but the dataset stores k-space targets cropped'):
    splits.make_source(dataclasses.replace(tf, crop_to_recon_size=False), 'train')


@pytest.mark.unit
def test_records_out_of_order_stop_with_the_record_named(built, monkeypatch):
  _, _, _, tf = built
  source, _ = splits.make_source(tf, 'val')
  records = source._data_source()  # pylint: disable=protected-access
  monkeypatch.setitem(source._handles, 0, [records[1], records[0]])  # pylint: disable=protected-access
  with pytest.raises(DataError, match='record 0 holds .* slice 1, expected .* slice 0'):
    source[0]


@pytest.mark.unit
def test_the_builder_refuses_missing_and_empty_folders(tmp_path):
  with pytest.raises(
    DataError, match=r'nowhere: the manual directory does not exist \(expected a folder holding train/\)'
  ):
    tfds_fastmri.split_folders(tmp_path / 'nowhere', 'folder')  # TFDS asserts it exists; build_tfds.py checks first
  (tmp_path / 'm' / 'singlecoil_train').mkdir(parents=True)
  with pytest.raises(DataError, match=r'singlecoil_train: no .h5 files'):
    _build(tmp_path / 'm', tmp_path / 'tfds', config='singlecoil_knee')
  with pytest.raises(DataError, match=r'm: no training folder for fastmri_slices/multicoil_brain \(expected one of '):
    _build(tmp_path / 'm', tmp_path / 'tfds', config='multicoil_brain')


@pytest.mark.unit
def test_a_corrupt_file_is_named_or_skipped_and_counted(tmp_path):
  src, _ = sample.resolve_data_root('')
  manual = tmp_path / 'knee'
  shutil.copytree(src / 'train', manual / 'singlecoil_train')
  (manual / 'singlecoil_train' / 'broken.h5').write_bytes(b'not an hdf5 file at all')
  with pytest.raises(DataError, match=r'broken.h5: cannot open as HDF5'):
    _build(manual, tmp_path / 'tfds', config='singlecoil_knee')
  builder = _build(manual, tmp_path / 'tfds2', config='singlecoil_knee', skip_bad_files=True)
  table = builder.info.metadata['splits']['train']
  assert [pathlib.Path(p).name for p, _ in table['skipped']] == ['broken.h5']
  assert len(table['volumes']) == 2 and builder.info.splits['train'].num_examples == 36
  assert table['volumes'][0]['target'] == 'reconstruction_esc'  # the single-coil target fastMRI reads


@pytest.mark.unit
def test_an_interrupted_build_reuses_the_extracted_volumes(tmp_path, monkeypatch):
  manual = _manual_dir(tmp_path / 'manual')
  calls = []
  real = fastmri.FastMRISliceSource.read_target

  def counting(self, v, s):
    calls.append(self.volumes[v].name)
    return real(self, v, s)

  monkeypatch.setattr(fastmri.FastMRISliceSource, 'read_target', counting)
  original_generate = tfds_fastmri.FastmriSlices._generate_examples

  def interrupted(self, cache_dir, table):
    raise RuntimeError('killed')  # the writing stage dies after every file was extracted

  monkeypatch.setattr(tfds_fastmri.FastmriSlices, '_generate_examples', interrupted)
  with pytest.raises(RuntimeError, match='killed'):
    _build(manual, tmp_path / 'tfds')
  first = len(calls)
  assert first == 18 + 18 + 5 + 8
  monkeypatch.setattr(tfds_fastmri.FastmriSlices, '_generate_examples', original_generate)
  builder = _build(manual, tmp_path / 'tfds')
  assert len(calls) == first  # nothing read again
  assert builder.info.splits['train'].num_examples == 41
  # a changed file is read again
  _multicoil_kspace_file(manual / 'train' / 'knee_fixture_mc.h5', slices=4)
  shutil.rmtree(builder.data_dir)
  builder = _build(manual, tmp_path / 'tfds')
  assert calls[first:] == ['knee_fixture_mc'] * 4 and builder.info.splits['train'].num_examples == 40


@pytest.mark.integration  # two short trainings
def test_three_training_steps_give_the_same_losses_from_tfds_and_h5(built, tmp_path):
  from mrisr_jax import run_curves, train

  manual, data_dir, _, _ = built
  results = []
  for name, extra in (
    ('h5', dict(root=str(manual))),
    ('tfds', dict(format='tfds', tfds_dir=str(data_dir), tfds_name='fastmri_slices/folder')),
  ):
    config = tiny_config()
    config.data.update(extra)
    config.stop_after_steps = 3
    config.log_every_steps = 1
    summary = train.train_and_evaluate(config, str(tmp_path / name))
    scalars = run_curves.read_scalars(tmp_path / name)
    losses = {k: v for k, v in scalars.items() if k.startswith('train/loss')}
    assert losses and all(len(steps) == 3 for steps, _ in losses.values()), losses
    results.append((summary, losses))
  (sum_a, loss_a), (sum_b, loss_b) = results
  assert loss_a.keys() == loss_b.keys()
  for key in loss_a:
    np.testing.assert_array_equal(loss_a[key][1], loss_b[key][1])
  assert sum_a == sum_b


@pytest.mark.integration  # the tool in a subprocess
def test_build_tool_builds_then_leaves_a_built_dataset_and_names_a_missing_folder(tmp_path):
  manual = tmp_path / 'manual'
  src, _ = sample.resolve_data_root('')
  shutil.copytree(src / 'val', manual / 'train')
  tool = str(REPO / 'tools' / 'build_tfds.py')
  args = ['--config', 'folder', '--manual_dir', str(manual), '--data_dir', str(tmp_path / 'tfds'), '--num_workers', '1']
  proc = run_main(*args, module=tool, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "slices per split {'train': 8}" in proc.stdout
  assert not any((tmp_path / 'tfds' / 'downloads' / tfds_fastmri.CACHE_FOLDER).rglob('*.npy'))  # cache removed
  again = run_main(*args, module=tool, timeout=300)
  assert again.returncode == 0 and 'is already built' in again.stdout
  missing = run_main('--config', 'singlecoil_knee', '--manual_dir', str(tmp_path / 'absent'), module=tool, timeout=300)
  assert missing.returncode == 2
  assert 'absent: the manual directory does not exist' in error_line(missing)


@pytest.mark.unit
def test_hosts_share_the_global_batches_of_a_tfds_source(built):
  from mrisr_jax.data import pipeline

  _, _, _, tf = built

  def batches(index, count):
    ds, _ = pipeline.make_train_dataset(
      tf, scale=4, global_batch_size=4, seed=5, process_index=index, process_count=count, start=6
    )
    it = iter(ds)
    return [next(it)['hr'] for _ in range(2)]

  one = batches(0, 1)
  halves = [batches(p, 2) for p in range(2)]
  for b in range(2):  # the two hosts' local batches side by side are the one-host global batch
    np.testing.assert_array_equal(np.concatenate([halves[0][b], halves[1][b]]), one[b])
