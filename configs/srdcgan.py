"""SR-DCGAN x4 (seeds/002): an 8-layer conv generator (layers 3 and 6 stride-2 transposed convs, BN +
ReLU, tanh out) against a 6-conv BatchNorm discriminator with a dense sigmoid output, trained with BCE
only (the seed's adversarial loss; no pixel or perceptual term), Adam betas (0.5, 0.999), per-epoch
exponential schedules lr_G = 3e-5 * 0.95^epoch and lr_D = 2e-5 * 0.96^epoch, inputs normalised with
mean = std = 0.5 (inside the models), 240x256 HR <-> 60x64 LR (ADNI slices), batch 16, 300 epochs.

The embedded sample's slices (192x168) are smaller than 240x256: the full config needs real data
(--config.data.root=...); `quick` trains on 64x64 crops of the sample.
Arguments (comma-separated): scale=4 (the only one), quick.
  python -m mrisr_jax.main --config configs/srdcgan.py:quick --workdir DIR
"""

from mrisr_jax import config_base

_recipes = config_base.load_sibling(__file__, '_recipes.py')

ARGS = dict(scale=(4, (4,)), quick=False)


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/srdcgan.py', ARGS))


def build(scale: int = 4, quick: bool = False):
  c = config_base.base_config('srdcgan_x4', dict(name='srdcgan', features=64, input_mean=0.5, input_std=0.5), 4)
  c.discriminator = config_base.ml_collections.ConfigDict(
    dict(name='srdcgan_d', features=(64, 64, 128, 128, 256, 256), negative_slope=0.2, input_mean=0.5, input_std=0.5)
  )
  del c.data['hr_patch_size']  # a (height, width) pair here, not the default int side
  c.data.hr_patch_size = (240, 256)  # whole ADNI slices
  c.data.degradation = ('bicubic',)  # choice: the seed says '4 times downsampled', not how
  c.loss.gan = 'nonsaturating'  # BCE: G = BCE(D(G(x)), 1), D = BCE(D(x), 1) + BCE(D(G(x)), 0)
  c.batch_size = 16
  c.stages = config_base.ml_collections.ConfigDict(
    dict(
      gan=config_base.stage(
        kind='gan',
        epochs=300,
        pixel_weight=0.0,
        adversarial_weight=1.0,
        lr_g=3e-5,
        lr_d=2e-5,
        b1=0.5,
        schedule='step',
        schedule_epochs=1,
        schedule_factor=0.95,
        schedule_factor_d=0.96,
      )
    )
  )
  c.stage_order = ('gan',)
  if quick:
    c.name += '_quick'
    c.model.features = 16
    c.discriminator.features = (16, 16, 32, 32, 64, 64)
    c.batch_size = 8
    c.data.hr_patch_size = (64, 64)
    c.data.val_max_slices = 4
    # 10x the seed's rates and a slower decay: a few hundred steps instead of 300 epochs of ADNI.
    c.stages.gan.update(dict(epochs=40, lr_g=3e-4, lr_d=2e-4, schedule_epochs=10))
    _recipes.quick_logging(c, every=80)
  return c
