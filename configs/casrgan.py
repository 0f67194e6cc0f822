"""CASRGAN: the seed's recipe (L1 pre-training, DeepNorm-off fine-tuning, GAN training).

Arguments (comma-separated): scale=2|3|4 (default 4; `x2` works too), quick (a small model on the
embedded sample, CPU minutes).
Use: python -m mrisr_jax.main --config configs/casrgan.py --workdir DIR
     python -m mrisr_jax.main --config configs/casrgan.py:scale=4,quick --workdir DIR   (CPU, minutes)
Override any field: --config.data.root=/data/fastmri_knee --config.batch_size=64
"""

import ml_collections

from mrisr_jax import config_base
from mrisr_jax.config_base import base_config, stage

_recipes = config_base.load_sibling(__file__, '_recipes.py')

ARGS = dict(scale=(4, (2, 3, 4)), quick=False)


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/casrgan.py', ARGS))


def build(scale: int = 4, quick: bool = False) -> ml_collections.ConfigDict:
  c = casrgan_config(scale)
  if quick:
    # x4 is the README's main job (minutes on 2 CPU cores); x2/x3 keep 40 so that CI stays short
    make_quick(c, pretrain_epochs=100 if scale == 4 else 40)
  return c


def casrgan_config(scale: int = 4) -> ml_collections.ConfigDict:
  """The CASRGAN seed: L1 pre-training, DeepNorm-off fine-tuning, GAN training."""
  c = base_config(
    f'casrgan_x{scale}',
    dict(
      name='casr',
      growth_rate0=128,
      depth=20,
      growth_rate=32,
      rdb_depth=6,
      n_stb=2,
      embed_dim=96,
      patch_size=6,
      num_heads=6,
      window_size=4,
      mlp_ratio=4.0,
      deepnorm=True,
      norm_before=False,
      reference_compat=False,  # True reproduces the reference's 3 attention deviations
      remat=False,  # recompute AFEB activations in the backward pass
      # AFEBs per scan iteration. 1 keeps compile time flat in depth (GPU/TPU); XLA:CPU runs scans
      # ~20x slower than straight-line code (docs/benchmarks.md), so 0 = auto: unrolled on CPU, 1 elsewhere.
      scan_unroll=0,
    ),
    scale,
  )
  # The seed trains on 384 px HR; these crops keep the LR side (24) a multiple of patch*window.
  c.stages = ml_collections.ConfigDict(
    dict(
      pretrain=stage(kind='generator', epochs=60),
      finetune=stage(kind='generator', epochs=20, deepnorm_alpha=1.0),
      gan=stage(kind='gan', epochs=60, deepnorm_alpha=1.0, dropout=0.1, **_recipes.CASRGAN_GAN_LOSS),
    )
  )
  c.stage_order = ('pretrain', 'finetune', 'gan')
  return c


def make_quick(c: ml_collections.ConfigDict, pretrain_epochs: int = 40) -> None:
  """Scale the CASRGAN recipe down so it runs to completion on 2 CPU cores in a few minutes.

  x4 (the README's main job) pre-trains for 100 epochs, long enough to pass bicubic on the sample;
  the x2/x3 quick runs keep the default 40 so that CI stays short.
  """
  c.name = c.name + '_quick'
  c.model.update(
    dict(growth_rate0=32, depth=4, growth_rate=16, rdb_depth=4, embed_dim=48, patch_size=3, num_heads=3, window_size=4)
  )
  c.batch_size = 8
  c.data.hr_patch_size = 24 * c.model.scale  # LR crops of 24 px at every scale (96 HR at x4)
  c.data.val_max_slices = 4
  c.loss.allow_random_vgg = True
  # A 0.3M-parameter model on 36 slices: a larger step size than the seed's 1e-4, same stages.
  c.stages.pretrain.update(dict(epochs=pretrain_epochs, lr_g=1e-3, schedule_epochs=30))
  c.stages.finetune.update(dict(epochs=5, lr_g=2.5e-4, schedule_epochs=5))
  # Random VGG features carry ~1e-4 of the perceptual signal ImageNet features do, so the seed's
  # balance (content held by the perceptual term) does not hold: L1 holds the content instead.
  c.stages.gan.update(
    dict(epochs=3, lr_g=1e-4, lr_d=1e-4, schedule_epochs=3, pixel_weight=1.0, adversarial_weight=1e-3)
  )
  _recipes.quick_logging(c, every=100)
