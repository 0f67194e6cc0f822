"""The cardiac perceptual-loss SR network x4 (seeds/003, after Johnson et al. 2016): 4 residual
blocks and 2 upscaling blocks, trained alone (no discriminator) on LR = bicubic downsampling + Gaussian
blur sigma 1.0. The seed's four models are the four values of `model=`:

  model=1  perceptual loss (VGG16 relu2_2), transposed-convolution upscaling   (default)
  model=2  perceptual loss, nearest-neighbour + convolution upscaling
  model=3  MSE loss, transposed convolution
  model=4  MSE loss, nearest neighbour

Seed training defaults: 20 epochs, batch 48, LR input 88x88 (HR 352x352, whole cardiac slices; larger
than the embedded sample's 192x168 slices, so the full config needs real data). Adam lr 1e-3 is our
choice (Keras's default; the seed gives none). The VGG16 weights load from torchvision's
vgg16-397923af.pth (--config.loss.vgg_weights=PATH).
Arguments (comma-separated): model=1|2|3|4 (default 1; `model2` works too), quick.
  python -m mrisr_jax.main --config configs/perceptual.py:model=2,quick --workdir DIR
"""

from mrisr_jax import config_base

_recipes = config_base.load_sibling(__file__, '_recipes.py')

VARIANTS = {
  1: ('perceptual', 'transposed'),
  2: ('perceptual', 'nearest'),
  3: ('mse', 'transposed'),
  4: ('mse', 'nearest'),
}
ARGS = dict(model=(1, tuple(VARIANTS)), quick=False)


def get_config(arg: str | None = None):
  return build(**config_base.parse_args(arg, 'configs/perceptual.py', ARGS))


def build(model: int = 1, quick: bool = False):
  loss, upsample = VARIANTS[model]
  c = config_base.base_config(
    f'perceptual_x4_model{model}', dict(name='perceptual_sr', features=64, num_resblocks=4, upsample=upsample), 4
  )
  c.data.hr_patch_size = 352
  c.data.degradation = ('bicubic', 'blur:1.0')
  c.batch_size = 48
  c.loss.vgg_arch = 'vgg16'
  c.loss.perceptual_layers = {'relu2_2': 1.0}  # Johnson et al.'s SR layer
  weights = (
    dict(pixel_loss='mse', pixel_weight=0.0, perceptual_weight=1.0)
    if loss == 'perceptual'
    else dict(pixel_loss='mse', pixel_weight=1.0)
  )
  c.stages = config_base.ml_collections.ConfigDict(
    dict(train=config_base.stage(kind='generator', epochs=20, lr_g=1e-3, schedule='constant', **weights))
  )
  c.stage_order = ('train',)
  if quick:
    c.name += '_quick'
    c.model.features = 16
    c.batch_size = 8
    c.data.hr_patch_size = 48
    c.data.val_max_slices = 4
    c.loss.allow_random_vgg = True
    c.stages.train.update(dict(epochs=50, schedule='step', schedule_epochs=30))
    _recipes.quick_logging(c, every=100)
  return c
