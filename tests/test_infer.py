"""mrisr_jax.infer / tiling / network_variables: tiled vs whole-slice SR, file round trips, weights
sources.

Weights are random (numpy) rather than a model init: jitting a discriminator init costs ~10 s on
CPU, and these tests only need fixed generator weights. The SRCNN weights reach a training workdir
checkpoint and, through `mrisr_jax.export`, a .safetensors file.
"""

from __future__ import annotations

import logging
import sys

import jax
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mrisr_jax import export, infer, network_variables, registry, tiling
from mrisr_jax.checkpoint import Checkpointer
from mrisr_jax.data.degrade import bicubic_resize
from mrisr_jax.data.images import write_grey
from mrisr_jax.interop import convert, state_dict_io
from mrisr_jax.predictor import Predictor
from mrisr_jax.train_state import TrainState
from tests.helpers import REPO

pytestmark = pytest.mark.unit


def _config(name, arg):
  sys.path.insert(0, str(REPO))
  import importlib

  return importlib.import_module(f'configs.{name}').get_config(arg)


def _random_variables(config, seed):
  """He-scaled random weights, last-layer bias 0.5 so SR values mostly stay inside [0, 1]."""
  rng = np.random.default_rng(seed)
  like = network_variables.like_variables(config)

  def draw(path, s):
    name = '/'.join(str(getattr(p, 'key', p)) for p in path)
    if name.endswith('kernel'):
      return (rng.standard_normal(s.shape) * np.sqrt(1.0 / np.prod(s.shape[:-1]))).astype(s.dtype)
    return np.full(s.shape, 0.5 if 'reconstruction' in name or 'tail' in name else 0.01, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, like)


def _smooth(shape, seed=0):
  """A smooth image stack in (0.1, 0.9): what an MR slice looks like more than white noise."""
  rng = np.random.default_rng(seed)
  x = rng.random(shape)
  for axis in (-1, -2):
    x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
  return (0.1 + 0.8 * (x - x.min()) / (x.max() - x.min())).astype(np.float32)


@pytest.fixture(scope='module')
def srcnn(tmp_path_factory):
  """(config, workdir, .safetensors exported from that workdir) for SRCNN x4."""
  root = tmp_path_factory.mktemp('srcnn')
  config = _config('srcnn', 'quick')
  variables = _random_variables(config, 0)
  tiny = {'x': np.zeros((1,), np.float32)}
  state = TrainState(
    step=np.int32(7),
    g_params=variables['params'],
    g_batch_stats={},
    d_params=tiny,
    d_batch_stats={},
    g_opt_state=tiny,
    d_opt_state=tiny,
    rng=np.zeros((2,), np.uint32),
  )
  ckpt = Checkpointer(root / 'run', async_save=False)
  ckpt.save(7, state, {'stage': 'pretrain'}, None)
  ckpt.close()
  export.export(config, root / 'srcnn.safetensors', workdir=root / 'run')
  return config, root / 'run', root / 'srcnn.safetensors'


@pytest.fixture(scope='module')
def edsr_x2(tmp_path_factory):
  """(config, .safetensors) for EDSR x2 (quick), written in the reference layout."""
  root = tmp_path_factory.mktemp('edsr')
  config = _config('edsr', 'x2,quick')
  path = root / 'edsr_x2.safetensors'
  state_dict_io.save_state_dict(convert.flax_to_state_dict('edsr', _random_variables(config, 1)), path)
  return config, path


def _predict(config, weights_path):
  model = registry.build_generator(config.model)
  variables = network_variables.load_generator_variables(config, weights_path)
  return model, Predictor(model, variables).forward  # one forward pass, as tiling calls it


def test_tiles_have_one_legal_shape_and_stitch_exactly():
  seen = set()

  def nearest(x):  # a "model" with no context: every tiling must reproduce it exactly
    seen.add(x.shape)
    return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)

  lr = _smooth((3, 45, 37))
  out = tiling.super_resolve(nearest, lr, 2, 8, False, tile=20, overlap=3, batch=4)
  np.testing.assert_array_equal(out, np.repeat(np.repeat(lr, 2, axis=1), 2, axis=2))
  assert seen == {(4, 16, 16, 1)}  # tile 20 -> 16 for the size multiple 8; batch filled by repeats
  seen.clear()
  whole = tiling.super_resolve(nearest, lr, 2, 8, False)  # untiled: padded to the multiple
  np.testing.assert_array_equal(whole, out)
  assert seen == {(3, 48, 40, 1)}
  seen.clear()
  narrow = tiling.super_resolve(nearest, lr[:2, :, :12], 2, 8, False, tile=20, overlap=3)
  np.testing.assert_array_equal(narrow, out[:2, :, :24])
  assert seen == {(8, 16, 16, 1)}  # 4 tiles down each slice; W padded 12 -> 16, not tiled
  with pytest.raises(tiling.TilingError, match='must exceed 2 \\* overlap'):
    tiling.super_resolve(nearest, lr, 2, 8, False, tile=20, overlap=8)


def test_tiled_equals_untiled_when_the_overlap_covers_the_receptive_field(srcnn, edsr_x2):
  config, _, path = srcnn
  model, predict = _predict(config, path)
  lr = _smooth((2, 37, 29))
  whole = tiling.super_resolve(predict, lr, 4, model.size_multiple, True)
  assert whole.shape == (2, 148, 116) and 0.01 < whole.std()
  # SRCNN reaches 6 HR pixels each way (9x9 then 5x5): overlap 2 LR = 8 HR pixels covers it
  tiled = tiling.super_resolve(predict, lr, 4, model.size_multiple, True, tile=12, overlap=2, batch=5)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)
  # overlap 1 LR = 4 HR < 6: seams differ, but only within reach of the tile borders
  seams = tiling.super_resolve(predict, lr, 4, model.size_multiple, True, tile=12, overlap=1)
  assert np.abs(seams - whole).max() > 1e-4
  np.testing.assert_allclose(seams[:, :30, :30], whole[:, :30, :30], atol=1e-5)  # first tile's interior

  config, path = edsr_x2
  model, predict = _predict(config, path)
  lr = _smooth((2, 40, 34), seed=1)
  whole = tiling.super_resolve(predict, lr, 2, model.size_multiple, False)
  # EDSR quick: 11 LR 3x3 convs up to the pixel shuffle (radius 11 < 13), one HR conv after
  tiled = tiling.super_resolve(predict, lr, 2, model.size_multiple, False, tile=30, overlap=13)
  assert whole.shape == tiled.shape == (2, 80, 68)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_npy_and_png_round_trips(srcnn, tmp_path):
  config, _, path = srcnn
  stack = _smooth((3, 20, 18))
  np.save(tmp_path / 'stack.npy', stack)
  np.save(tmp_path / 'slice.npy', stack[1])
  r = infer.infer(config, path, tmp_path / 'stack.npy', tmp_path / 'out' / 'stack_sr.npy')
  out3 = np.load(tmp_path / 'out' / 'stack_sr.npy')
  assert out3.shape == (3, 80, 72) and out3.dtype == np.float32 and r['slices'] == 3
  assert 'stack_sr.npy: 3 slice(s) 20x18 -> 80x72 (srcnn x4 in-plane)' in infer.summary_line(r)
  infer.infer(config, path, tmp_path / 'slice.npy', tmp_path / 'slice_sr.npy')
  np.testing.assert_allclose(np.load(tmp_path / 'slice_sr.npy'), out3[1], atol=1e-6)
  infer.infer(config, path, tmp_path / 'slice.npy', tmp_path / 'slice_sr.png', tile=8, overlap=2)
  assert Image.open(tmp_path / 'slice_sr.png').size == (72, 80)

  write_grey(tmp_path / 'a8.png', stack[0])
  write_grey(tmp_path / 'a16.png', stack[0], bit_depth=16)
  infer.infer(config, path, tmp_path / 'a8.png', tmp_path / 'a8_sr.png')
  infer.infer(config, path, tmp_path / 'a16.png', tmp_path / 'a16_sr.png')
  with Image.open(tmp_path / 'a8_sr.png') as im8, Image.open(tmp_path / 'a16_sr.png') as im16:
    assert (im8.mode, im8.size) == ('L', (72, 80))
    assert im16.mode.startswith('I') and im16.size == (72, 80)
  with pytest.raises(infer.InferError, match='needs a 2-D input'):
    infer.infer(config, path, tmp_path / 'stack.npy', tmp_path / 'stack.png')


def _oblique_affine():
  rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)  # a 90-degree in-plane rotation
  a = np.eye(4)
  a[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0])
  a[:3, 3] = [10.0, -20.0, 5.0]
  return a


def test_nifti_round_trip_keeps_geometry_and_intensity_scale(srcnn, tmp_path):
  config, _, path = srcnn
  vol = (_smooth((12, 10, 3), seed=2) * 800).astype(np.int16)
  img = nib.Nifti1Image(vol, _oblique_affine())
  img.set_sform(_oblique_affine(), code=1)
  img.set_qform(_oblique_affine(), code=2)
  nib.save(img, tmp_path / 'vol.nii.gz')
  infer.infer(config, path, tmp_path / 'vol.nii.gz', tmp_path / 'vol_sr.nii.gz', tile=6, overlap=2)
  src, out = nib.load(tmp_path / 'vol.nii.gz'), nib.load(tmp_path / 'vol_sr.nii.gz')
  data = np.asarray(out.dataobj)
  assert data.shape == (48, 40, 3) and data.dtype == np.float32
  np.testing.assert_allclose(out.header.get_zooms(), (0.225, 0.275, 3.0), rtol=1e-6)
  assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
  assert int(out.header['sform_code']) == 1 and int(out.header['qform_code']) == 2
  np.testing.assert_allclose(out.get_qform(), out.get_sform(), atol=1e-5)
  # a new voxel centre i' lies at old index (i' + 0.5) / 4 - 0.5 along axes 0, 1
  for new in ([0, 0, 0], [47, 39, 2], [24, 20, 1], [5, 33, 0]):
    old = [(new[0] + 0.5) / 4 - 0.5, (new[1] + 0.5) / 4 - 0.5, new[2]]
    np.testing.assert_allclose(
      nib.affines.apply_affine(out.affine, new), nib.affines.apply_affine(src.affine, old), atol=1e-5
    )
  hi = np.percentile(vol.astype(np.float32), 99.5)
  # the input's units: the model's [0, 1] times hi, the part above hi added back bicubically
  assert np.abs(data - _bicubic_in_plane(vol, 4)).max() < 1.5 * hi and abs(data.mean() / vol.mean() - 1) < 0.5


def test_fastmri_h5_to_h5_and_npy(srcnn, tmp_path):
  import h5py

  from mrisr_jax.data import fastmri_files

  config, _, path = srcnn
  target = (_smooth((2, 16, 12), seed=3) * 5e-4).astype(np.float32)
  # fastMRI's single-coil layout: kspace, reconstruction_esc, ismrmrd_header, attrs
  fastmri_files.write_volume(tmp_path / 'file1000.h5', target=target, attrs={'acquisition': 'CORPD_FBK'})
  infer.infer(config, path, tmp_path / 'file1000.h5', tmp_path / 'sr.npy')
  infer.infer(config, path, tmp_path / 'file1000.h5', tmp_path / 'sr.h5')
  sr = np.load(tmp_path / 'sr.npy')
  assert sr.shape == (2, 64, 48) and 0 <= sr.min() and sr.max() <= 1
  with h5py.File(tmp_path / 'sr.h5', 'r') as f:
    # as fastMRI's save_reconstructions writes it (its evaluate.py reads recons['reconstruction'])
    assert list(f) == ['reconstruction'] and f['reconstruction'].dtype == np.float32
    np.testing.assert_allclose(f['reconstruction'][()], sr * target.max(), rtol=1e-6)
    assert f.attrs['acquisition'] == 'CORPD_FBK' and f.attrs['sr_scale'] == 4
    assert f.attrs['sr_target'] == 'reconstruction_esc' and f.attrs['sr_model'] == 'srcnn'
    assert f.attrs['max'] == pytest.approx(float(f['reconstruction'][()].max()))
    assert f.attrs['norm'] == pytest.approx(float(np.linalg.norm(f['reconstruction'][()].astype(np.float64))))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['file1000.h5', 'sr.h5', 'sr.npy']  # no temp files
  with pytest.raises(infer.InferError, match='can be written as .npy or .h5'):
    infer.infer(config, path, tmp_path / 'file1000.h5', tmp_path / 'sr.png')


def test_workdir_and_exported_file_give_identical_outputs(srcnn, tmp_path):
  config, workdir, path = srcnn
  np.save(tmp_path / 'x.npy', _smooth((2, 16, 14)))
  infer.infer(config, workdir, tmp_path / 'x.npy', tmp_path / 'from_workdir.npy')
  infer.infer(config, path, tmp_path / 'x.npy', tmp_path / 'from_file.npy')
  np.testing.assert_array_equal(np.load(tmp_path / 'from_workdir.npy'), np.load(tmp_path / 'from_file.npy'))


def test_weights_errors_are_one_line(srcnn, edsr_x2, tmp_path):
  _, path = edsr_x2
  x4 = _config('edsr', 'x4,quick')
  with pytest.raises(network_variables.WeightsError) as e:
    network_variables.load_generator_variables(x4, path)
  assert str(path) in str(e.value) and 'missing 1 keys (model_3.0.model.2.weight)' in str(e.value)
  assert '\n' not in str(e.value)
  np.save(tmp_path / 'x.npy', _smooth((1, 8, 8)))
  with pytest.raises(network_variables.WeightsError, match='does not fit edsr'):
    infer.infer(x4, path, tmp_path / 'x.npy', tmp_path / 'y.npy')
  assert not (tmp_path / 'y.npy').exists()
  with pytest.raises(network_variables.WeightsError, match='no such weights file'):
    network_variables.load_generator_variables(x4, tmp_path / 'nope.pth')
  (tmp_path / 'w.ckpt').write_bytes(b'')
  with pytest.raises(network_variables.WeightsError, match="unknown weights suffix '.ckpt'"):
    network_variables.load_generator_variables(x4, tmp_path / 'w.ckpt')
  with pytest.raises(network_variables.WeightsError, match='no checkpoints directory'):
    network_variables.load_generator_variables(x4, tmp_path)
  srcnn_config, workdir, _ = srcnn
  with pytest.raises(network_variables.WeightsError, match='checkpoint does not fit edsr: missing'):
    network_variables.load_generator_variables(x4, workdir)


def test_outputs_never_overwrite(srcnn, tmp_path):
  config, _, path = srcnn
  np.save(tmp_path / 'x.npy', _smooth((1, 8, 8)))
  (tmp_path / 'y.npy').write_bytes(b'keep me')
  with pytest.raises(infer.InferError, match='exists; pass --overwrite'):
    infer.infer(config, path, tmp_path / 'x.npy', tmp_path / 'y.npy')
  assert (tmp_path / 'y.npy').read_bytes() == b'keep me'
  infer.infer(config, path, tmp_path / 'x.npy', tmp_path / 'y.npy', overwrite=True)
  assert np.load(tmp_path / 'y.npy').shape == (1, 32, 32)
  before = (tmp_path / 'x.npy').read_bytes()
  for out in (tmp_path / 'x.npy', tmp_path / 'sub' / '..' / 'x.npy'):
    with pytest.raises(infer.InferError, match='is the input file'):
      infer.infer(config, path, tmp_path / 'x.npy', out, overwrite=True)
  assert (tmp_path / 'x.npy').read_bytes() == before
  with pytest.raises(infer.InferError, match='can be written as .npy or .png'):
    infer.infer(config, path, tmp_path / 'x.npy', tmp_path / 'x.nii.gz')


def test_thick_slice_volume_is_super_resolved_through_plane(srcnn, tmp_path):
  """A thick-slice SRCNN (degradation thick:axis=0, LR factors (4, 1)) refines the volume's thick
  axis only: planes containing it go through the model with that axis as rows, as in training."""
  config, _, path = srcnn
  thick = config.copy_and_resolve_references()
  thick.data.degradation = ('thick:axis=0',)
  vol = (_smooth((10, 12, 5), seed=6) * 700).astype(np.int16)  # 5 slices of 4 mm along axis 2
  affine = _oblique_affine() @ np.diag([1 / 0.9, 1 / 1.1, 4.0 / 3.0, 1.0])  # zooms (1, 1, 4)
  nib.save(nib.Nifti1Image(vol, affine), tmp_path / 'thick.nii')
  r = infer.infer(thick, path, tmp_path / 'thick.nii', tmp_path / 'fine.nii.gz')
  assert r['mode'] == 'through-plane' and r['sr_shape'] == (10, 12, 20)
  out = nib.load(tmp_path / 'fine.nii.gz')
  np.testing.assert_allclose(out.header.get_zooms(), (1.0, 1.0, 1.0), rtol=1e-6)
  assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(affine)
  for new in ([0, 0, 0], [9, 11, 19], [3, 4, 10]):  # only axis 2 is refined
    old = [new[0], new[1], (new[2] + 0.5) / 4 - 0.5]
    np.testing.assert_allclose(
      nib.affines.apply_affine(out.affine, new), nib.affines.apply_affine(affine, old), atol=1e-5
    )
  # the same planes by hand: (x, z, y) stacks with the thick axis z as rows, then back
  model, predict = _predict(config, path)
  hi = np.float32(np.percentile(vol.astype(np.float32), 99.5))
  u = np.transpose(vol.astype(np.float32), (1, 2, 0)) / hi  # (y, z, x)
  planes = np.clip(u, 0, 1)
  sr = tiling.super_resolve(predict, planes, 4, model.size_multiple, True, factors=(4, 1))
  sr = sr + bicubic_resize(u - planes, 20, 10)  # the voxels above hi, through-plane bicubic
  np.testing.assert_allclose(np.asarray(out.dataobj), np.transpose(sr * hi, (2, 0, 1)), rtol=1e-6, atol=1e-3)


# ------------------------------------------------------------------------------- intensities


@pytest.fixture(scope='module')
def identity_srcnn(tmp_path_factory):
  """(config, .safetensors) of an SRCNN x4 that returns its (clipped bicubic) input: delta kernels,
  zero biases. A "model" that is exactly bicubic inside [0, 1], to see what infer adds around it."""
  config = _config('srcnn', 'quick')
  like = network_variables.like_variables(config)['params']
  params = {name: {k: np.zeros(v.shape, v.dtype) for k, v in layer.items()} for name, layer in like.items()}
  for name, layer in params.items():
    k = layer['kernel']
    k[k.shape[0] // 2, k.shape[1] // 2, 0, 0] = 1.0
  path = tmp_path_factory.mktemp('identity') / 'identity_srcnn.safetensors'
  state_dict_io.save_state_dict(convert.flax_to_state_dict('srcnn', {'params': params}), path)
  return config, path


def _bicubic_in_plane(vol, s):
  """bicubic_resize of every plane across stored axis 2 by s: what infer's in-plane rule is scored against."""
  planes = np.transpose(vol.astype(np.float32), (2, 0, 1))
  return np.transpose(bicubic_resize(planes, planes.shape[1] * s, planes.shape[2] * s), (1, 2, 0))


def test_nifti_output_keeps_bright_and_negative_voxels_in_the_input_units(srcnn, identity_srcnn, tmp_path):
  """Voxels 10x the 99.5th percentile and negative voxels are neither flattened nor zeroed: with a
  model that is bicubic inside [0, 1] the output is the bicubic upsampling of the input, within
  5 %; with any model (random weights) it stays within ~the percentile of it."""
  vol = _smooth((48, 40, 8), seed=4) * 1000  # 15360 voxels: the top 0.5 % is 77 of them
  bright, dark = np.zeros(vol.shape, bool), np.zeros(vol.shape, bool)
  bright[20:24, 10:14, 2:6] = True  # 64 voxels, above the percentile
  dark[30:34, 26:30, 2:6] = True
  vol[bright] = 10 * np.percentile(vol, 99.5)
  vol[dark] = -0.5 * np.percentile(vol, 99.5)
  p = np.percentile(vol, 99.5)
  assert 9 * p < vol.max() < 11 * p
  nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), tmp_path / 'vol.nii')
  bic = _bicubic_in_plane(vol, 4)
  up = lambda m: np.repeat(np.repeat(m, 4, 0), 4, 1)  # noqa: E731

  config, path = identity_srcnn
  r = infer.infer(config, path, tmp_path / 'vol.nii', tmp_path / 'ident.nii')
  assert r['intensity_scale'] == pytest.approx(p, rel=1e-5)
  out = np.asarray(nib.load(tmp_path / 'ident.nii').dataobj)
  assert out.shape == bic.shape == (192, 160, 8)
  np.testing.assert_allclose(out[up(bright)], bic[up(bright)], rtol=0.05)  # ~10 p, not p
  np.testing.assert_allclose(np.percentile(out, 99.9), np.percentile(bic, 99.9), rtol=0.05)
  np.testing.assert_allclose(out.max(), bic.max(), rtol=0.05)
  # ~-0.5 p, not 0; off bicubic only by the model's own clipping of bicubic's undershoot, < 0.2 p
  assert out[124:132, 108:116, 2:6].max() < -0.4 * p
  assert np.abs(out[up(dark)] - bic[up(dark)]).max() < 0.2 * p
  assert abs(out.min() - bic.min()) < 0.2 * p and out.min() < -0.5 * p

  config, _, path = srcnn  # random weights: the model part is off, but by at most ~p
  infer.infer(config, path, tmp_path / 'vol.nii', tmp_path / 'random.nii')
  out = np.asarray(nib.load(tmp_path / 'random.nii').dataobj)
  assert np.abs(out - bic).max() < 1.5 * p
  assert out[84:92, 44:52, 2:6].min() > 8 * p and out[124:132, 108:116, 2:6].max() < 0.5 * p


def test_npy_outside_the_unit_range_is_rescaled_and_mapped_back(srcnn, tmp_path, caplog):
  config, _, path = srcnn
  x = _smooth((2, 20, 18), seed=5)
  x /= x.max()  # [0, 1] with maximum exactly 1: the model's range, SR = model(x)
  np.save(tmp_path / 'unit.npy', x)
  np.save(tmp_path / 'big.npy', x * 3000)
  infer.infer(config, path, tmp_path / 'unit.npy', tmp_path / 'unit_sr.npy')
  with caplog.at_level(logging.WARNING):
    r = infer.infer(config, path, tmp_path / 'big.npy', tmp_path / 'big_sr.npy')
  unit, big = np.load(tmp_path / 'unit_sr.npy'), np.load(tmp_path / 'big_sr.npy')
  np.testing.assert_allclose(big, unit * 3000, rtol=1e-5)  # the model saw x; output in the input's units
  assert r['intensity_scale'] == 3000 and len(r['notes']) == 1
  assert 'big.npy' in caplog.text and 'divided by its maximum 3000' in caplog.text

  # negative values are not clipped: their part is upsampled bicubically and added to model(clip)
  y = x.copy()
  y[0, 5:9, 4:10] = -0.5
  c = np.clip(y, 0, 1)
  np.save(tmp_path / 'neg.npy', y)
  np.save(tmp_path / 'clipped.npy', c)
  infer.infer(config, path, tmp_path / 'neg.npy', tmp_path / 'neg_sr.npy')
  infer.infer(config, path, tmp_path / 'clipped.npy', tmp_path / 'clipped_sr.npy')
  neg, clipped = np.load(tmp_path / 'neg_sr.npy'), np.load(tmp_path / 'clipped_sr.npy')
  np.testing.assert_allclose(neg - clipped, bicubic_resize(y - c, 80, 72), atol=1e-5)

  # a .png holds [0, 1]: the rescaled slice is written in the model's units, as the [0, 1] one is
  np.save(tmp_path / 'big2d.npy', x[1] / x[1].max() * 3000)
  np.save(tmp_path / 'unit2d.npy', x[1] / x[1].max())
  infer.infer(config, path, tmp_path / 'big2d.npy', tmp_path / 'big2d.png')
  infer.infer(config, path, tmp_path / 'unit2d.npy', tmp_path / 'unit2d.png')
  with Image.open(tmp_path / 'big2d.png') as a, Image.open(tmp_path / 'unit2d.png') as b:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------- interrupts


@pytest.mark.integration  # subprocess CLI and signals (pyproject.toml: the tiers)
@pytest.mark.parametrize('sig, code', [('SIGINT', 130), ('SIGTERM', 143)])
def test_interrupted_infer_removes_its_temporaries_and_says_so(srcnn, tmp_path, sig, code):
  """The signal arrives as soon as the output's temporary file exists: before the first forward
  pass, so usually during the model's compile (where a KeyboardInterrupt used to crash XLA)."""
  import os
  import signal
  import subprocess
  import time

  _, _, path = srcnn
  vol = (np.random.default_rng(0).random((64, 64, 24)) * 1000).astype(np.float32)
  nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / 'vol.nii')
  out = tmp_path / 'out'
  out.mkdir()
  args = ['--config', 'configs/srcnn.py:quick', '--weights', str(path), '--input', str(tmp_path / 'vol.nii')]
  proc = subprocess.Popen(
    [sys.executable, '-m', 'mrisr_jax.infer', *args, '--output', str(out / 'sr.nii'), '--noprogress'],
    cwd=REPO,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.monotonic() + 120  # a hang guard: the temporary appears after ~3 s (imports)
    while not any(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.01)
    assert [p.name.startswith('.sr.nii.') for p in out.iterdir()] == [True], proc.poll()
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == code, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith('mrisr_jax:')]
  assert lines == [f'mrisr_jax: interrupted by {sig}; removed 1 temporary file(s)'], stderr[-3000:]
  assert 'Traceback' not in stderr and 'Fatal Python error' not in stderr and 'wrote' not in stdout
  assert list(out.iterdir()) == []  # no temporary, no output
