"""The cardiac perceptual-loss SR network x4 (seeds/003, after Johnson et al. 2016): 4 residual
blocks and 2 upscaling blocks, trained alone (no discriminator) on LR = bicubic downsampling + Gaussian
blur sigma 1.0. The seed's four models are the four arguments:

  model1  perceptual loss (VGG16 relu2_2), transposed-convolution upscaling   (default)
  model2  perceptual loss, nearest-neighbour + convolution upscaling
  model3  MSE loss, transposed convolution
  model4  MSE loss, nearest neighbour

Seed training defaults: 20 epochs, batch 48, LR input 88x88 (HR 352x352, whole cardiac slices; larger
than the embedded sample's 192x168 slices, so the full config needs real data). Adam lr 1e-3 is our
choice (Keras's default; the seed gives none). The VGG16 weights load from torchvision's
vgg16-397923af.pth (--config.loss.vgg_weights=PATH).
Arguments (comma-separated): model1 | model2 | model3 | model4, quick.
"""
from mrisr_jax import config_base

VARIANTS = {'model1': ('perceptual', 'transposed'), 'model2': ('perceptual', 'nearest'),
            'model3': ('mse', 'transposed'), 'model4': ('mse', 'nearest')}


def get_config(arg: str | None = None):
  tokens = config_base.parse_arg(arg, 'configs/perceptual_x4.py', tuple(VARIANTS) + ('quick',))
  chosen = [t for t in tokens if t in VARIANTS] or ['model1']
  if len(chosen) > 1:
    raise ValueError(f'configs/perceptual_x4.py: pick one of {", ".join(VARIANTS)}, got {", ".join(sorted(chosen))}')
  loss, upsample = VARIANTS[chosen[0]]
  c = config_base.base_config(f'perceptual_x4_{chosen[0]}', dict(
      name='perceptual_sr', features=64, num_resblocks=4, upsample=upsample), 4)
  c.data.hr_patch_size = 352
  c.data.degradation = ('bicubic', 'blur:1.0')
  c.batch_size = 48
  c.loss.vgg_arch = 'vgg16'
  c.loss.perceptual_layers = {'relu2_2': 1.0}  # Johnson et al.'s SR layer
  weights = (dict(pixel_loss='mse', pixel_weight=0.0, perceptual_weight=1.0) if loss == 'perceptual'
             else dict(pixel_loss='mse', pixel_weight=1.0))
  c.stages = config_base.ml_collections.ConfigDict(dict(train=config_base.stage(
      kind='generator', epochs=20, lr_g=1e-3, schedule='constant', **weights)))
  c.stage_order = ('train',)
  if 'quick' in tokens:
    c.name += '_quick'
    c.model.features = 16
    c.batch_size = 8
    c.data.hr_patch_size = 48
    c.data.val_max_slices = 4
    c.loss.allow_random_vgg = True
    c.stages.train.update(dict(epochs=50, schedule='step', schedule_epochs=30))
    config_base.quick_logging(c, every=100)
  return c
