"""Resuming a workdir with a changed config: what is refused, what is allowed, and where stages lie."""

import json
import shutil

import pytest

from mrisr_jax import resume_guard, spec, train
from mrisr_jax.checkpoint import Checkpointer
from mrisr_jax.recipe import stage_plan
from tests.helpers import tiny_config


def _as_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _finished(config, spe=4):
  """(saved config dict, saved plan, step) of a run of `config` that finished every stage."""
  plan = stage_plan(spec.resolve(config), spe)
  return _as_dict(config), resume_guard.plan_meta(plan), plan[-1].end


@pytest.mark.unit
def test_more_epochs_of_the_last_stage_are_allowed_and_the_stages_keep_their_steps():
  config = tiny_config()  # quick recipe: pretrain 100, finetune 5, gan 3 epochs
  saved, plan, step = _finished(config)
  config.stages.gan.epochs = 5
  config.log_every_steps = 7
  diff = resume_guard.check(saved, _as_dict(config), plan, 'gan', step, 4)
  assert diff.refused == []
  assert any(line.startswith('stages.gan.epochs: 3 -> 5') for line in diff.allowed)
  assert any(line.startswith('log_every_steps') for line in diff.allowed)
  new = resume_guard.resume_plan(stage_plan(spec.resolve(config), 4), plan, 'gan', step, 4)
  assert [(s.name, s.start, s.end) for s in new] == [('pretrain', 0, 400), ('finetune', 400, 420), ('gan', 420, 440)]


@pytest.mark.unit
def test_more_epochs_of_a_finished_stage_are_refused_and_never_relabel_the_saved_step():
  config = tiny_config()
  saved, plan, step = _finished(config)
  config.stages.pretrain.epochs = 120
  diff = resume_guard.check(saved, _as_dict(config), plan, 'gan', step, 4)
  assert diff.refused == ['stages.pretrain.epochs: 100 -> 120 (stage pretrain finished at step 400)']
  # allowed explicitly: the saved step stays in the GAN stage (it was re-labelled "pretrain" before)
  new = resume_guard.resume_plan(stage_plan(spec.resolve(config), 4), plan, 'gan', step, 4)
  assert [(s.name, s.start, s.end) for s in new] == [('pretrain', 0, 400), ('finetune', 400, 420), ('gan', 420, 432)]
  stage_of_step = next(s.name for s in new if s.start <= step - 1 < s.end)
  assert stage_of_step == 'gan'


@pytest.mark.unit
@pytest.mark.parametrize(
  'key, value',
  [
    ('model.name', 'edsr'),
    ('model.scale', 2),
    ('model.depth', 3),
    ('stages.gan.lr_g', 1e-3),
    ('stages.finetune.deepnorm_alpha', 2.0),
    ('stages.gan.kind', 'generator'),
    ('ema_decay', 0.999),
  ],
)
def test_what_changes_the_meaning_of_the_state_is_refused(key, value):
  config = tiny_config()
  saved, plan, step = _finished(config)
  config.unlock()
  holder, _, field = key.rpartition('.')
  node = config
  for part in filter(None, holder.split('.')):
    node = node[part]
  node[field] = value
  diff = resume_guard.check(saved, _as_dict(config), plan, 'gan', step, 4)
  assert [line.split(':')[0] for line in diff.refused] == [key]


@pytest.mark.unit
def test_a_changed_stage_list_and_a_shortened_current_stage_are_refused():
  config = tiny_config()
  saved, plan, _ = _finished(config)
  config.stage_order = ('pretrain', 'gan')
  diff = resume_guard.check(saved, _as_dict(config), plan, 'gan', 432, 4)
  assert [line.split(':')[0] for line in diff.refused] == ['stage_order']
  config = tiny_config()
  config.stages.pretrain.epochs = 10  # the saved step 300 is in pretrain: 10 epochs end at 40
  diff = resume_guard.check(saved, _as_dict(config), plan, 'pretrain', 300, 4)
  assert diff.refused == ['stages.pretrain.epochs: 100 -> 10 (stage pretrain has already trained to step 300)']


def _finetune_only(epochs=1):
  """One L1 stage after an empty one (no VGG, no discriminator: cheap to compile)."""
  config = tiny_config()
  config.stages.pretrain.epochs = 0
  config.stages.finetune.epochs = epochs  # 36 slices / batch 4 = 9 steps per epoch
  config.stages.gan.epochs = 0
  config.eval_every_steps = 100
  config.image_every_steps = 100
  return config


@pytest.mark.integration  # training loop
def test_resume_with_more_epochs_continues_the_stage_and_another_model_stops_in_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_finetune_only(1), workdir)
  finished = str(tmp_path / 'finished')
  shutil.copytree(workdir, finished)

  train.train_and_evaluate(_finetune_only(2), workdir)  # more epochs of the current stage
  ckpt = Checkpointer(workdir, async_save=False)
  meta = ckpt.restore_meta(ckpt.latest_step())
  ckpt.close()
  assert (meta['step'], meta['stage']) == (18, 'finetune')
  assert meta['plan'] == [['pretrain', 0, 0], ['finetune', 0, 18], ['gan', 18, 18]]

  other = _finetune_only(2)
  other.model.depth = 3
  other.model.scale = 2
  with pytest.raises(resume_guard.ResumeConfigError) as e:
    train.train_and_evaluate(other, workdir)
  line = str(e.value)
  assert '\n' not in line and 'model.depth: 2 -> 3' in line and 'model.scale: 4 -> 2' in line
  assert '--allow_config_change' in line

  # the reported defect: more pre-training epochs on a finished run (where the plan it would be
  # allowed with is test_more_epochs_of_a_finished_stage_are_refused_and_never_relabel_the_saved_step's)
  more_pretrain = _finetune_only(1)
  more_pretrain.stages.pretrain.epochs = 1
  with pytest.raises(resume_guard.ResumeConfigError, match='stages.pretrain.epochs: 0 -> 1'):
    train.train_and_evaluate(more_pretrain, finished)
  ckpt = Checkpointer(finished, async_save=False)
  assert ckpt.latest_step() == 9
  ckpt.close()
