"""One runner for every entry point and tool (mrisr_jax.cli): a config file or override at fault is one
line, `mrisr_jax: error: ...`, and exit status 2; config files take keyed arguments, old paths alias."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from mrisr_jax import cli, config_base, errors
from tests.helpers import REPO

pytestmark = pytest.mark.unit

# entry module -> the flags it requires besides --config (so the config is what fails)
ENTRY_POINTS = {
  'main': ['--workdir', 'w'],
  'infer': ['--weights', 'w', '--input', 'in.npy', '--output', 'out.npy'],
  'evaluate': ['--weights', 'w', '--input', 'in.npy'],
  'export': ['--out', 'out.safetensors'],
  'import_torch': ['--checkpoint', 'c.pth', '--workdir', 'w'],
}
SCRIPTS = {
  'main': 'mrisr-train',
  'infer': 'mrisr-infer',
  'evaluate': 'mrisr-evaluate',
  'export': 'mrisr-export',
  'import_torch': 'mrisr-import',
}
TOOLS = ['benchmark_train_step.py', 'memory_plan.py']
# error kind -> (the --config argument and overrides, a word the line must name)
KINDS = {
  'missing file': (['--config', '{tmp}/missing.py'], 'missing.py: no such config file'),
  'syntax error': (['--config', '{tmp}/broken.py:quick'], 'broken.py:2: syntax error'),
  'no get_config': (['--config', '{tmp}/empty.py'], 'empty.py: has no get_config'),
  'unknown argument': (['--config', 'configs/casrgan.py:qiuck'], "unknown argument 'qiuck'"),
  'mistyped key': (['--config', 'configs/srcnn.py:quick', '--config.model.sacle=4'], "no field 'sacle'"),
  'wrong type': (['--config', 'configs/srcnn.py:quick', '--config.batch_size=many'], "batch_size='many'"),
}


@pytest.fixture(scope='module')
def bad_configs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('configs')
  (tmp / 'broken.py').write_text('def get_config(arg=None):\n  return (\n')
  (tmp / 'empty.py').write_text('NAME = "no get_config here"\n')
  return tmp


def _args(kind: str, tmp) -> tuple[list[str], str]:
  args, expected = KINDS[kind]
  return [a.format(tmp=tmp) for a in args], expected


def _one_line(stderr: str, expected: str) -> str:
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith('mrisr_jax: error: ') and expected in lines[0], lines[0]
  return lines[0]


def _run(command: list[str]) -> subprocess.CompletedProcess:
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('module', sorted(ENTRY_POINTS))
def test_entry_point_config_errors_are_one_line_exit_2(module, kind, bad_configs):
  """(These fail before jax loads: about half a second each.)"""
  args, expected = _args(kind, bad_configs)
  proc = _run([sys.executable, '-m', f'mrisr_jax.{module}', *args, *ENTRY_POINTS[module]])
  assert proc.returncode == 2, proc.stderr[-3000:]
  _one_line(proc.stderr, expected)


@pytest.mark.integration
@pytest.mark.parametrize('module', sorted(SCRIPTS))
def test_console_scripts_run_the_same_runner(module, bad_configs):
  script = os.path.join(os.path.dirname(sys.executable), SCRIPTS[module])
  assert os.path.exists(script), f'{SCRIPTS[module]} is not installed: pip install -e . puts it there'
  args, expected = _args('mistyped key', bad_configs)
  proc = _run([script, *args, *ENTRY_POINTS[module]])
  assert proc.returncode == 2, proc.stderr[-3000:]
  _one_line(proc.stderr, expected)


def _tool(name: str):
  spec = importlib.util.spec_from_file_location(f'tool_{name[:-3]}', REPO / 'tools' / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('tool', TOOLS)
def test_tool_config_errors_are_one_line_exit_2(tool, kind, bad_configs, monkeypatch, capsys):
  """In-process (a tool imports jax and TensorFlow, whose start-up chatter is theirs, not ours)."""
  args, expected = _args(kind, bad_configs)
  module = _tool(tool)
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(sys, 'argv', [tool, *args])
  with pytest.raises(SystemExit) as e:
    cli.guard(module.main)
  assert e.value.code == 2
  _one_line(capsys.readouterr().err, expected)


@pytest.mark.integration
@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('tool', TOOLS)
def test_tool_config_errors_are_one_line_exit_2_as_a_subprocess(tool, kind, bad_configs):
  """The tools load the config before they import clu/TensorFlow, so stderr holds only our line."""
  args, expected = _args(kind, bad_configs)
  proc = _run([sys.executable, f'tools/{tool}', *args])
  assert proc.returncode == 2, proc.stderr[-3000:]
  _one_line(proc.stderr, expected)


def test_guard_exit_statuses(capsys):
  def fails(exc):
    raise exc

  with pytest.raises(SystemExit) as e:
    cli.guard(fails, errors.ConfigError('a\n  b'))
  assert e.value.code == 2 and capsys.readouterr().err == 'mrisr_jax: error: a b\n'
  with pytest.raises(SystemExit) as e:
    cli.guard(fails, KeyboardInterrupt())
  assert e.value.code == 130
  with pytest.raises(RuntimeError):  # unexpected: the traceback stays
    cli.guard(fails, RuntimeError('bug'))
  with pytest.raises(SystemExit) as e:
    cli.guard(fails, ImportError('no torch'), user_errors=(ImportError,))
  assert e.value.code == 2


def test_every_error_class_of_the_package_is_a_user_error():
  """Each `class XError` in mrisr_jax (ConfigError, DataError, WeightsError, ExportError, ...) derives
  from UserError, so the runner prints it as one line; the ValueError ones stay ValueErrors."""
  import importlib

  found = []
  for path in sorted((REPO / 'mrisr_jax').rglob('*.py')):
    names = re.findall(r'^class (\w+Error)\(', path.read_text(), re.M)
    if names:
      module = importlib.import_module('.'.join(path.relative_to(REPO).with_suffix('').parts))
      found += [getattr(module, name) for name in names]
  assert len(found) >= 15, found
  for cls in found:
    assert issubclass(cls, errors.UserError), cls
  from mrisr_jax import config_check

  assert config_check.ConfigError is errors.ConfigError and issubclass(errors.ConfigError, ValueError)
  assert str(errors.UserError('two\nlines')) == 'two lines'


def test_split_overrides():
  rest, overrides = cli.split_overrides(
    [
      '--config',
      'c.py:quick',
      '--config.seed',
      '3',
      '--config.a.b=x=y',
      '--config.flips',
      '--workdir',
      'w',
      '--noconfig.data.flips',
      '--config.seed',
      '-4',
      '--',
      '--config.x=1',
    ]
  )
  assert rest == ['--config', 'c.py:quick', '--workdir', 'w', '--', '--config.x=1']
  assert overrides == [('seed', '3'), ('a.b', 'x=y'), ('flips', None), ('data.flips', 'false'), ('seed', '-4')]


OVERRIDES = [
  ['--config.seed', '3', '--config.data.flips', '--noconfig.data.transposes'],
  ['--config.data.degradation', 'bicubic', '--config.data.degradation', 'blur:1.0'],
  ["--config.data.degradation=('thick:axis=0',)", '--config.batch_size=64', '--config.stages.gan.lr_g=2e-4'],
  ["--config.loss.perceptual_layers={'relu2_2': 2.0}", '--config.data.root=/x', '--config.model.dtype=bfloat16'],
  ['--config.stage_order=("gan",)', '--config.data.flips=false', '--config.data.hr_patch_size=480'],
  ['--config.data.intensity_percentiles=(1.0, 99.0)', '--config.data.acquisitions=CORPD_FBK', '--config.seed=-3'],
]


@pytest.mark.parametrize('extra', OVERRIDES, ids=range(len(OVERRIDES)))
def test_overrides_parse_as_ml_collections_config_flags_do(extra):
  """The runner applies `--config.KEY=VALUE` itself; the values are what config_flags made of them."""
  from absl import flags
  from ml_collections import config_flags

  spec = str(REPO / 'configs' / 'srcnn.py') + ':quick'
  argv = ['prog', '--config', spec, *extra]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  _, overrides = cli.split_overrides(argv[1:])
  ours = cli.load_config(spec, overrides)
  assert str(ours) == str(holder.value) and ours.to_json(sort_keys=True) == holder.value.to_json(sort_keys=True)


def test_load_config_locks_and_names_the_field():
  config = cli.load_config(str(REPO / 'configs' / 'srcnn.py'), [('seed', '7')])
  assert config.seed == 7
  with pytest.raises(AttributeError):
    config.new_field = 1
  for overrides, expected in [
    ([('data.flipz', 'true')], "config.data has no field 'flipz' (did you mean 'flips'?)"),
    ([('seed', None)], '--config.seed: needs a value'),
    ([('data.flips', 'maybe')], "--config.data.flips='maybe': expected true or false"),
    ([('seed.x', '1')], 'config.seed holds a value (int), not fields'),
  ]:
    with pytest.raises(errors.ConfigError, match=re.escape(expected)):
      cli.load_config(str(REPO / 'configs' / 'srcnn.py'), overrides)
  assert not config_base.load_config(str(REPO / 'configs' / 'srcnn.py')).is_locked  # as tools had it


def test_parse_args_keyed_and_old_tokens():
  schema = dict(scale=(4, (2, 3, 4)), gan=False, quick=False)
  assert config_base.parse_args(None, 'f.py', schema) == dict(scale=4, gan=False, quick=False)
  assert config_base.parse_args('scale=2,quick', 'f.py', schema) == dict(scale=2, gan=False, quick=True)
  assert config_base.parse_args('x3, gan', 'f.py', schema) == dict(scale=3, gan=True, quick=False)
  assert config_base.parse_args('quick=false', 'f.py', schema)['quick'] is False
  assert config_base.parse_args('model3', 'p.py', dict(model=(1, (1, 2, 3, 4))))['model'] == 3
  for arg, expected in [
    ('scale=5', 'f.py: scale=5 is not supported (known: 2, 3, 4)'),
    ('scale=two', "f.py: 'scale=two': scale takes an integer"),
    ('x2,scale=3', 'f.py: scale given twice (x2, scale=3): pick one of scale=2|3|4'),
    ('quick=maybe', "f.py: 'quick=maybe': quick is a switch"),
    ('qiuck,x9', "f.py: unknown argument 'qiuck'"),
    ('gan=', "f.py: unknown argument 'gan='"),
  ]:
    with pytest.raises(errors.ConfigError) as e:
      config_base.parse_args(arg, 'f.py', schema)
    assert str(e.value).startswith(expected), str(e.value)


def _load(file: str, arg: str | None):
  spec = importlib.util.spec_from_file_location('cfg_' + file.replace('.', '_'), REPO / 'configs' / file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# (one file per system with keyed arguments, the old path and argument it equals)
SAME = [
  ('casrgan.py', 'scale=2,quick', 'casrgan_x2.py', 'quick'),
  ('casrgan.py', None, 'casrgan_x4.py', None),
  ('casrgan.py', 'scale=3', 'casrgan_x3.py', None),
  ('casrgan.py', 'quick', 'casrgan_x4.py', 'quick'),
  ('fagan.py', 'scale=8', 'fagan_x8.py', None),
  ('fagan.py', 'scale=2,quick', 'fagan_x2.py', 'quick'),
  ('fagan.py', None, 'fagan_x4.py', None),
  ('srdcgan.py', 'quick', 'srdcgan_x4.py', 'quick'),
  ('perceptual.py', 'model=2,quick', 'perceptual_x4.py', 'model2,quick'),
  ('perceptual.py', None, 'perceptual_x4.py', 'model1'),
  ('edsr.py', 'scale=3,gan,baseline', 'edsr.py', 'x3,gan,baseline'),
  ('srcnn.py', 'scale=2,gan', 'srcnn.py', 'x2,gan'),
  ('rdn.py', 'quick,scale=3', 'rdn.py', 'x3,quick'),
  ('drrn.py', 'scale=2', 'drrn.py', 'x2'),
]


@pytest.mark.parametrize('new,new_arg,old,old_arg', SAME)
def test_keyed_arguments_match_the_old_paths(new, new_arg, old, old_arg):
  a, b = _load(new, new_arg), _load(old, old_arg)
  assert a.to_json(sort_keys=True) == b.to_json(sort_keys=True) and str(a) == str(b)


def test_config_files_import_as_modules_too():
  sys.path.insert(0, str(REPO))
  from configs import casrgan, casrgan_x4

  assert casrgan_x4.get_config('quick').name == 'casrgan_x4_quick' == casrgan.get_config('quick').name
  assert isinstance(casrgan.get_config('scale=2'), ml_collections.ConfigDict)
