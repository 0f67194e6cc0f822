"""Degradation steps the recipes use: antialiased bicubic, Gaussian blur, their composition, and the
bicubic-upsampled input the pipeline hands SRCNN/DRRN."""
import numpy as np
import pytest

from mrisr_jax.data import degrade, pipeline


def test_antialiased_bicubic_is_torchs_algorithm_with_the_chosen_kernel():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  for h, w, oh, ow in [(20, 24, 5, 6), (17, 9, 4, 3), (48, 48, 12, 12)]:
    x = rng.random((h, w))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x[None, None]), size=(oh, ow), mode='bicubic',
                                          antialias=True).numpy()[0, 0]
    # torch's antialiased path uses the a = -0.5 kernel; ours is the same algorithm with a parameter.
    np.testing.assert_allclose(degrade.bicubic_resize(x, oh, ow, antialias=True, a=-0.5), ref, atol=1e-12)


def test_bicubic_downsample_keeps_constants_and_uses_every_pixel():
  np.testing.assert_allclose(degrade.bicubic_downsample(np.full((16, 12), 0.3), 4), 0.3, atol=1e-12)
  x = np.zeros((16, 16))
  x[5, 6] = 1.0  # one pixel spreads over a 4x-wide kernel: several outputs, ~1/16 of its mass in all
  y = degrade.bicubic_downsample(x, 4)
  assert (np.abs(y) > 1e-3).sum() >= 4
  assert y.sum() == pytest.approx(1 / 16, rel=0.05)


def test_gaussian_blur_equals_scipy_mirror_mode():
  ndimage = pytest.importorskip('scipy.ndimage')
  x = np.random.default_rng(1).random((2, 20, 23))
  for sigma in (0.5, 1.0, 2.0):
    ref = np.stack([ndimage.gaussian_filter(s, sigma, mode='mirror', truncate=4.0) for s in x])
    np.testing.assert_allclose(degrade.gaussian_blur(x, sigma), ref, atol=1e-12)


def test_make_lr_applies_the_steps_in_order_and_rejects_bad_ones():
  x = np.random.default_rng(2).random((32, 24)).astype(np.float32)
  np.testing.assert_allclose(degrade.make_lr(x, 4, ('bicubic', 'blur:1.0')),
                             degrade.gaussian_blur(degrade.bicubic_downsample(x, 4), 1.0), atol=1e-6)
  np.testing.assert_allclose(degrade.make_lr(x, 2), degrade.area_downsample(x, 2), atol=1e-7)
  for bad, message in [(('blur:1.0',), 'exactly one downsampling'), (('area', 'bicubic'), 'exactly one'),
                       (('area', 'blur:-1'), 'positive sigma'), (('nearest',), "unknown step 'nearest'")]:
    with pytest.raises(ValueError, match=message):
      degrade.make_lr(x, 2, bad)


def test_pipeline_gives_upsampled_input_and_rectangular_crops():
  data = dict(hr_patch_size=(32, 48), degradation=('bicubic', 'blur:1.0'), flips=False)
  plain = next(iter(pipeline.make_train_dataset(data, scale=4, global_batch_size=2, seed=3,
                                                process_index=0, process_count=1)))
  up = next(iter(pipeline.make_train_dataset(data, scale=4, global_batch_size=2, seed=3,
                                             process_index=0, process_count=1, upsampled_input=True)))
  assert plain['hr'].shape == (2, 32, 48, 1) and plain['lr'].shape == (2, 8, 12, 1)
  np.testing.assert_array_equal(up['hr'], plain['hr'])
  assert up['lr'].shape == (2, 32, 48, 1)
  expected = np.clip(degrade.bicubic_upsample(plain['lr'][..., 0], 4), 0, 1)
  np.testing.assert_allclose(up['lr'][..., 0], expected, atol=1e-6)
  np.testing.assert_allclose(plain['lr'][..., 0], degrade.make_lr(plain['hr'][..., 0], 4, data['degradation']),
                             atol=1e-6)
