"""mrisr_jax.export: fresh and checkpointed weights to reference-layout state_dicts."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import optax
import pytest
import torch

from mrisr_jax import export, recipe, registry
from mrisr_jax.checkpoint import Checkpointer
from mrisr_jax.interop import state_dict_io, torch_models
from tests.helpers import REPO

pytestmark = pytest.mark.unit


def srcnn_config(seed=0):
  sys.path.insert(0, str(REPO))
  from configs.srcnn import get_config

  c = get_config('quick')
  c.seed = seed
  return c


def test_fresh_export_is_the_training_init_and_loads_strictly(tmp_path):
  config = srcnn_config(seed=5)
  record = export.export(config, tmp_path / 'srcnn.safetensors')
  sd = state_dict_io.load_state_dict(tmp_path / 'srcnn.safetensors')
  assert record['model'] == 'srcnn' and record['keys'] == len(sd) == 6
  assert json.loads((tmp_path / 'srcnn.json').read_text())['config']['name'] == 'srcnn'
  mirror = torch_models.build_torch_generator(config.model)
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  # the same weights a training run with this seed starts from
  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  state = jax.jit(recipe.init_state_fn(config, g, d, optax.set_to_zero(), optax.set_to_zero()))(jax.random.PRNGKey(5))
  np.testing.assert_array_equal(
    sd['reconstruction.weight'], np.transpose(np.asarray(state.g_params['reconstruction']['kernel']), (3, 2, 0, 1))
  )
  other = export.export(srcnn_config(seed=6), tmp_path / 'other.pth')
  assert other['source'] == 'fresh init, seed 6'
  assert not np.array_equal(
    state_dict_io.load_state_dict(tmp_path / 'other.pth')['reconstruction.weight'], sd['reconstruction.weight']
  )


def test_checkpoint_export_picks_the_step_and_the_network(tmp_path):
  config = srcnn_config()
  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  init = jax.jit(recipe.init_state_fn(config, g, d, optax.set_to_zero(), optax.set_to_zero()))
  ckpt = Checkpointer(tmp_path / 'run', async_save=False)
  for step, seed in ((2, 1), (4, 2)):
    ckpt.save(step, init(jax.random.PRNGKey(seed)), {'stage': 'pretrain'}, None)
  ckpt.close()
  latest = export.export(config, tmp_path / 'g.safetensors', workdir=tmp_path / 'run')
  first = export.export(config, tmp_path / 'g2.safetensors', workdir=tmp_path / 'run', step=2)
  assert latest['step'] == 4 and first['step'] == 2
  a = state_dict_io.load_state_dict(tmp_path / 'g.safetensors')
  b = state_dict_io.load_state_dict(tmp_path / 'g2.safetensors')
  assert not np.array_equal(a['reconstruction.weight'], b['reconstruction.weight'])
  disc = export.export(config, tmp_path / 'd.pth', workdir=tmp_path / 'run', what='discriminator')
  sd = state_dict_io.load_state_dict(tmp_path / 'd.pth')
  assert disc['model'] == 'casrgan_d' and any(k.endswith('num_batches_tracked') for k in sd)
  mirror = torch_models.build_torch_discriminator(config)
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)


def test_export_errors_are_one_line(tmp_path):
  config = srcnn_config()
  (tmp_path / 'x.safetensors').write_bytes(b'keep me')
  with pytest.raises(export.ExportError, match='exists; pass --overwrite'):
    export.export(config, tmp_path / 'x.safetensors')
  assert (tmp_path / 'x.safetensors').read_bytes() == b'keep me'
  with pytest.raises(export.ExportError, match="unknown suffix '.npz'"):
    export.export(config, tmp_path / 'x.npz')
  with pytest.raises(export.ExportError, match='no checkpoints directory'):
    export.export(config, tmp_path / 'y.pth', workdir=tmp_path)
  with pytest.raises(export.ExportError, match='--step needs --workdir'):
    export.export(config, tmp_path / 'y.pth', step=3)


def test_an_existing_json_record_is_kept_without_overwrite(tmp_path):
  """export writes OUT and OUT's .json: an existing JSON (a user's results.json) stops it too, before
  anything is written (issue 14)."""
  config = srcnn_config()
  record = tmp_path / 'results.json'
  record.write_bytes(b'{"psnr": 31.2}\n')
  with pytest.raises(export.ExportError) as e:
    export.export(config, tmp_path / 'results.safetensors')
  assert str(e.value) == (
    f'{record}: exists (export writes its record beside results.safetensors); pass --overwrite to replace it'
  )
  assert record.read_bytes() == b'{"psnr": 31.2}\n' and not (tmp_path / 'results.safetensors').exists()
  (tmp_path / 'results.safetensors').write_bytes(b'keep me')
  with pytest.raises(export.ExportError, match='results.safetensors: exists; pass --overwrite'):
    export.export(config, tmp_path / 'results.safetensors')
  assert record.read_bytes() == b'{"psnr": 31.2}\n'
  done = export.export(config, tmp_path / 'results.safetensors', overwrite=True)  # both replaced
  assert json.loads(record.read_text())['keys'] == done['keys'] == 6
  assert len(state_dict_io.load_state_dict(tmp_path / 'results.safetensors')) == 6


def test_export_takes_the_best_step_by_default_and_records_why(tmp_path):
  config = srcnn_config()
  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  init = jax.jit(recipe.init_state_fn(config, g, d, optax.set_to_zero(), optax.set_to_zero()))
  ckpt = Checkpointer(tmp_path / 'run', async_save=False)  # keeps the latest 3 and the best: 2 goes
  for step, psnr in ((2, 30.0), (4, 32.5), (6, 31.0), (8, None)):
    ckpt.save(step, init(jax.random.PRNGKey(step)), {'stage': 'pretrain'}, {'val_psnr': psnr} if psnr else None)
  ckpt.close()
  best = export.export(config, tmp_path / 'best.safetensors', workdir=tmp_path / 'run')
  assert best['step'] == 4 and best['step_reason'] == 'best validation PSNR 32.50 dB; latest is 8'
  saved = json.loads((tmp_path / 'best.json').read_text())
  assert saved['step'] == 4 and saved['step_reason'] == best['step_reason']
  assert export.export(config, tmp_path / 'latest.pth', workdir=tmp_path / 'run', step='latest')['step'] == 8
  assert export.export(config, tmp_path / 'six.pth', workdir=tmp_path / 'run', step='6')['step'] == 6
  a = state_dict_io.load_state_dict(tmp_path / 'best.safetensors')['reconstruction.weight']
  expected = np.transpose(np.asarray(init(jax.random.PRNGKey(4)).g_params['reconstruction']['kernel']), (3, 2, 0, 1))
  np.testing.assert_array_equal(a, expected)
  for bad in ('foo', '5'):
    with pytest.raises(export.ExportError, match=r'\(saved: 4, 6, 8\)'):
      export.export(config, tmp_path / 'bad.pth', workdir=tmp_path / 'run', step=bad)
  assert not (tmp_path / 'bad.pth').exists() and not (tmp_path / 'bad.json').exists()


def test_ema_is_kept_by_the_steps_and_exported(tmp_path):
  from mrisr_jax import steps

  config = srcnn_config()
  config.ema_decay = 0.9
  g, d = registry.build_generator(config.model), registry.build_discriminator(config)
  init = jax.jit(recipe.init_state_fn(config, g, d, optax.sgd(0.1), optax.set_to_zero()))
  state = init(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(
    state.g_ema_params['reconstruction']['kernel'], state.g_params['reconstruction']['kernel']
  )
  rng = np.random.default_rng(0)
  batch = {'lr': rng.random((2, 24, 24, 1), np.float32), 'hr': rng.random((2, 24, 24, 1), np.float32)}
  step = jax.jit(lambda st, b: steps.generator_step(st, b, g_model=g, g_tx=optax.sgd(0.1), ema_decay=0.9))
  new, _ = step(state, batch)
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.g_ema_params, new.g_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), new.g_ema_params, expected)
  assert steps.generator_variables(new)['params'] is new.g_ema_params  # validation scores the EMA
  ckpt = Checkpointer(tmp_path / 'run', async_save=False)
  ckpt.save(1, new, {'stage': 'pretrain'}, None)
  ckpt.close()
  export.export(config, tmp_path / 'ema.safetensors', workdir=tmp_path / 'run', what='ema')
  ema = state_dict_io.load_state_dict(tmp_path / 'ema.safetensors')
  np.testing.assert_array_equal(
    ema['reconstruction.weight'], np.transpose(np.asarray(new.g_ema_params['reconstruction']['kernel']), (3, 2, 0, 1))
  )
  plain = srcnn_config()  # ema_decay 0: no EMA kept or exported
  assert not jax.eval_shape(
    recipe.init_state_fn(plain, g, d, optax.sgd(0.1), optax.set_to_zero()), jax.random.PRNGKey(0)
  ).g_ema_params
  with pytest.raises(export.ExportError, match='--what ema needs --workdir'):
    export.export(config, tmp_path / 'x.safetensors', what='ema')
