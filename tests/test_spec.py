"""spec.resolve: a config checked once and turned into frozen, typed specs; defaults in one place."""

import dataclasses

import pytest

from mrisr_jax import config_base, recipe, spec, train
from mrisr_jax.config_check import ConfigError
from mrisr_jax.data import splits
from tests.helpers import tiny_config

pytestmark = pytest.mark.unit


def set_ignoring_type(section, key, value):
  with section.ignore_type():
    setattr(section, key, value)


def one_line_error(config) -> str:
  with pytest.raises(ConfigError) as e:
    spec.resolve(config)
  text = str(e.value)
  assert '\n' not in text, text
  return text


def test_resolve_gives_frozen_typed_specs():
  config = tiny_config()
  config.data.hr_patch_size = 48  # one int in the config ...
  run = spec.resolve(config)
  assert run.data.hr_patch_size == (48, 48)  # ... a (height, width) pair in the spec
  assert run.data.degradation == ('area',) and isinstance(run.data.degradation, tuple)
  assert run.lr_patch_shape == (12, 12) and run.scale == 4
  assert [s.name for s in run.stages] == list(config.stage_order)
  assert run.model.size_multiple == config.model.patch_size * config.model.window_size
  assert run.model.upsampled_input is False and run.model['depth'] == config.model.depth
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.data.hr_patch_size = (8, 8)
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.stages[0].lr_g = 1.0
  assert spec.resolve(run) is run  # resolving twice is free


def test_stage_plan_places_the_stages_on_the_step_axis():
  run = spec.resolve(tiny_config())
  spe, plan = recipe.plan_run(run, num_slices=36)
  assert spe == 36 // run.batch_size
  assert [(s.name, s.start, s.end) for s in plan] == [
    ('pretrain', 0, run.stages[0].epochs * spe),
    ('finetune', plan[0].end, plan[0].end + run.stages[1].epochs * spe),
    ('gan', plan[1].end, plan[1].end + run.stages[2].epochs * spe),
  ]
  assert plan[2].spec is run.stage('gan')


def test_defaults_live_in_the_specs():
  """config_base builds its sections from the spec dataclasses, so the two can never disagree."""
  c = config_base.base_config('x', dict(name='edsr'), 4)
  assert dict(c.data) == {**spec.DataSpec.defaults(), 'hr_patch_size': 96}
  assert dict(config_base.stage()) == spec.StageSpec.defaults()
  assert {k: c[k] for k in spec.RUN_DEFAULTS if k != 'name'} == {
    k: v for k, v in spec.RUN_DEFAULTS.items() if k != 'name'
  }
  # a partial data section (a notebook, a test) takes the same defaults
  assert spec.data_spec({'root': '/d'}) == dataclasses.replace(spec.DataSpec(), root='/d')


@pytest.mark.parametrize(
  'edit,key',
  [
    (lambda c: setattr(c.data, 'hr_patch_size', 50), 'config.data.hr_patch_size=50'),  # not a multiple of x4
    (lambda c: setattr(c.data, 'hr_patch_size', 40), 'config.data.hr_patch_size=40'),  # LR 10 vs window 4*2
    (lambda c: setattr(c.data, 'degradation', ('thick:axis=0',)), 'config.data.degradation'),
    (lambda c: setattr(c.data, 'format', 'dicom'), 'config.data.format'),
    (lambda c: setattr(c.data, 'val_fraction', 1.5), 'config.data.val_fraction'),
    (
      lambda c: setattr(c.data, 'transposes', True) or set_ignoring_type(c.data, 'hr_patch_size', (48, 96)),
      'config.data.transposes',
    ),
    (lambda c: setattr(c.stages.gan, 'adversarial_weight', 0.0), 'config.stages.gan.adversarial_weight'),
    (lambda c: setattr(c.stages.pretrain, 'epochs', -1), 'config.stages.pretrain.epochs'),
    (lambda c: setattr(c, 'grad_accum_steps', 3), 'config.grad_accum_steps=3'),
    (lambda c: setattr(c, 'log_every_steps', 0), 'config.log_every_steps=0'),
    (lambda c: setattr(c, 'profile_steps', '5:2'), 'config.profile_steps'),
    (lambda c: setattr(c.model, 'scale', 5), 'config.model.scale=5'),
  ],
)
def test_inconsistent_values_are_one_line_naming_the_key(edit, key):
  config = tiny_config()
  edit(config)
  assert key in one_line_error(config)


def test_unknown_fields_are_named():
  config = tiny_config()
  config.stages.pretrain.lr_generator = 1e-3
  assert 'config.stages.pretrain.lr_generator' in one_line_error(config)
  config = tiny_config()
  config.data.patch = 48
  assert 'config.data.patch' in one_line_error(config)


@pytest.mark.integration  # builds the run (jit of the initial state), no training step
def test_setup_reads_each_split_once(tmp_path, monkeypatch):
  built = []
  real = splits.build_source
  monkeypatch.setattr(
    splits,
    'build_source',
    lambda fmt, directory, *a, **k: built.append(directory.name) or real(fmt, directory, *a, **k),
  )
  run = train.setup(tiny_config(), str(tmp_path / 'w'))
  try:
    assert sorted(built) == ['train', 'val']
    assert isinstance(run.config, spec.RunSpec)
  finally:
    run.writer.close()
    run.ckpt.close()
