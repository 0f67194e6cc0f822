"""Every config file with every argument builds a valid config; every `quick` argument trains to the end on
the embedded sample (tier e2e; .ci/run runs it)."""

import math

import pytest

from mrisr_jax import config_check, train
from tests.test_models import load_config

pytestmark = pytest.mark.unit

# Every argument each config file accepts (besides combinations of the same tokens).
ARGS = {
  'casrgan_x2.py': [None, 'quick'],
  'casrgan_x3.py': [None, 'quick'],
  'casrgan_x4.py': [None, 'quick'],
  'srcnn.py': [None, 'x2', 'x3', 'gan', 'quick', 'gan,quick', 'x3,gan,quick'],
  'drrn.py': [None, 'x2', 'x3', 'gan', 'quick', 'gan,quick'],
  'edsr.py': [None, 'x2', 'x3', 'gan', 'baseline,x3', 'quick', 'gan,quick'],
  'rdn.py': [None, 'x2', 'x3', 'gan', 'quick', 'gan,quick'],
  'fagan_x2.py': [None, 'quick'],
  'fagan_x4.py': [None, 'quick'],
  'fagan_x8.py': [None, 'quick'],
  'srdcgan_x4.py': [None, 'quick'],
  'perceptual_x4.py': [
    None,
    'model1',
    'model2',
    'model3',
    'model4',
    'model1,quick',
    'model2,quick',
    'model3,quick',
    'model4,quick',
  ],
  'transmrsr.py': [None, 'scale=8', 'stage=prior', 'stage=sr', 'parity', 'content=paper', 'quick', 'quick,parity'],
}
# End-to-end runs kept to what differs (CI time; tools/models_table.py runs every one for docs/models.md):
# - casrgan_x4.py:quick is the README's main job: test_main runs it through the entry point. The x2/x3
#   CASRGAN and FA-GAN x2 recipes differ from a kept run only in the scale, which the model, parity and
#   config tests cover at every scale.
# - perceptual_x4's four variants are loss x upscaler; model1 (perceptual, transposed) and model4 (MSE,
#   nearest) run every loss and every upscaler.
# - Where a file has 'gan,quick', that run trains the 'quick' recipe's pre-training stage first and then
#   the GAN stage, so the plain 'quick' run would repeat its first half.
NOT_RUN = {('fagan_x2.py', 'quick'), ('perceptual_x4.py', 'model2,quick'), ('perceptual_x4.py', 'model3,quick')}
QUICK = [
  (f, a)
  for f, args in ARGS.items()
  for a in args
  if a
  and 'quick' in a
  and a != 'x3,gan,quick'
  and not f.startswith(('casrgan_', 'transmrsr'))  # test_transmrsr_e2e.py runs TransMRSR's two-stage job
  and not (a == 'quick' and 'gan,quick' in args)
  and (f, a) not in NOT_RUN
]
# Quick runs of the pixel-loss recipes land near bicubic (an untrained network is > 5 dB below it);
# the perceptual-only (random VGG) and adversarial-only (SR-DCGAN) recipes need not (docs/models.md).
NEAR_BICUBIC = {'casrgan_x2.py', 'casrgan_x3.py', 'srcnn.py', 'drrn.py', 'edsr.py', 'rdn.py'}


@pytest.mark.parametrize('file,arg', [(f, a) for f, args in ARGS.items() for a in args])
def test_config_builds_and_validates(file, arg):
  c = load_config(file, arg)
  config_check.validate(c)
  if arg and ('x2' in arg or 'x3' in arg):
    assert f'x{c.model.scale}' in arg
  if arg and 'quick' in arg:
    assert c.name.endswith('_quick')


def test_config_arguments_are_checked():
  with pytest.raises(ValueError, match=r"configs/edsr.py: unknown argument 'qiuck'"):
    load_config('edsr.py', 'qiuck')
  with pytest.raises(ValueError, match=r'configs/fagan_x4.py: unknown argument'):
    load_config('fagan_x4.py', 'gan')
  with pytest.raises(ValueError, match=r'pick one of'):
    load_config('perceptual_x4.py', 'model1,model3')
  assert load_config('edsr.py', 'x3').model.scale == 3
  assert load_config('srcnn.py', 'x2,gan').stage_order == ('pretrain', 'gan')
  assert dict(load_config('srcnn.py', None).lr_multipliers) == {'reconstruction': 0.1}


@pytest.mark.e2e
@pytest.mark.parametrize('file,arg', QUICK, ids=[f'{f[:-3]}:{a}' for f, a in QUICK])
def test_quick_argument_trains_to_the_end(tmp_path, file, arg):
  config = load_config(file, arg)
  summary = train.train_and_evaluate(config, str(tmp_path))
  model, bicubic = summary['model'], summary['bicubic']
  assert all(math.isfinite(model[k]) for k in ('psnr', 'ssim', 'nmse')), model
  assert (tmp_path / 'report' / 'report.html').exists()
  if file in NEAR_BICUBIC:
    assert model['psnr'] > bicubic['psnr'] - 1.0, (model, bicubic)
