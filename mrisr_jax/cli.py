"""One way in for every entry point and tool: the config loader and the runner.

`load_config('FILE[:ARGS]', overrides)` loads a config file by path and applies `--config.KEY=VALUE`
overrides; a missing file, a syntax error in it, no `get_config`, an unknown argument, an unknown key
or a value of the wrong type is a `ConfigError` naming the file, key or value.

`run(main)` runs a `python -m mrisr_jax.X` / `mrisr-X` entry point: absl flags (the module defines
them, `--config` a plain string flag) plus the overrides, then `main(config)`; `guard(fn)` runs a tool's
`main`. Either way a `UserError` ends the program with one line, `mrisr_jax: error: ...`, and exit
status 2; Ctrl-C exits 130; any other exception keeps its traceback. Both turn on JAX's persistent
compilation cache (mrisr_jax.compile_cache) before `main` runs, so before anything compiles.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as pylogging
import os
import pathlib
import re
import sys
from typing import Any, Callable, Sequence

from mrisr_jax.errors import ConfigError, UserError, exit_with

# TensorFlow only writes event files here (clu's writers); keep its C++ start-up notes off the console.
# Its oneDNN note ignores TF_CPP_MIN_LOG_LEVEL; TF_ENABLE_ONEDNN_OPTS touches TensorFlow's own kernels
# only, never JAX's.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

Overrides = Sequence[tuple[str, 'str | None']]

_OVERRIDE = re.compile(r'--?(?P<no>no)?config\.(?P<key>[^=]+)(?:=(?P<value>.*))?', re.S)
_NUMBER = re.compile(r'-\.?\d.*')
CONFIG_HELP = (
  'Config file, optionally FILE:ARGS (e.g. configs/casrgan.py:scale=4,quick); --config.KEY=VALUE overrides a field.'
)


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
  """`args` without the `--config.KEY[=VALUE]` overrides, and the overrides as (KEY, VALUE), in order.

  As ml_collections' config flags read them: `--config.KEY VALUE` takes the next argument when it is
  not a flag (a negative number is a value), a bare `--config.KEY` is a boolean (VALUE None) and
  `--noconfig.KEY` is KEY=false. Nothing after `--` is an override.
  """
  rest, overrides, i = [], [], 0
  while i < len(args):
    arg = args[i]
    if arg == '--':
      rest.extend(args[i:])
      break
    m = _OVERRIDE.fullmatch(arg)
    if m is None:
      rest.append(arg)
    else:
      value = 'false' if m['no'] else m['value']
      if value is None and i + 1 < len(args) and _is_value(args[i + 1]):
        i += 1
        value = args[i]
      overrides.append((m['key'], value))
    i += 1
  return rest, overrides


def _is_value(arg: str) -> bool:
  return not arg.startswith('-') or bool(_NUMBER.fullmatch(arg))


def load_config(spec: str, overrides: Overrides = (), *, lock: bool = True):
  """The config of `FILE[:ARGS]` (what --config takes), loaded by path, with `overrides` applied."""
  path, _, arg = str(spec or '').partition(':')
  if not path:
    raise ConfigError('--config: no config file given (FILE[:ARGS], e.g. configs/casrgan.py:quick)')
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f'{path}: no such config file')
  module_spec = importlib.util.spec_from_file_location(f'mrisr_config_{file.stem}', file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:  # the file itself (a config it imports is reported with its own name)
    where = f'{e.filename}:{e.lineno}' if e.filename else path
    raise ConfigError(f'{where}: syntax error: {e.msg}') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigError(f'{path}: has no get_config(arg) function')
  config = get_config(arg or None)
  if not hasattr(config, 'get_type'):
    raise ConfigError(f'{path}: get_config returned {type(config).__name__}, not a ConfigDict')
  apply_overrides(config, overrides)
  if lock:
    config.lock()
  return config


def apply_overrides(config, overrides: Overrides) -> None:
  """Sets each `--config.KEY=VALUE`, VALUE parsed as the field's type (as ml_collections' config flags:
  a tuple given more than once is the concatenation, e.g. `--config.x a --config.x b` = ('a', 'b'))."""
  tuples: dict[str, tuple] = {}
  for key, raw in overrides:
    holder, field = _holder_field(config, key)
    kind = holder.get_type(field)
    if raw is None and kind is not bool:
      raise ConfigError(f'--config.{key}: needs a value (--config.{key}=VALUE)')
    value = _parse(key, raw, kind)
    if kind is tuple:
      value = tuples[key] = tuples.get(key, ()) + value
    try:
      holder[field] = value
    except (TypeError, ValueError, KeyError, AttributeError) as e:
      raise ConfigError(f'--config.{key}={raw!r}: {e}') from None


def _holder_field(config, key: str) -> tuple[Any, str]:
  """The ConfigDict holding `key`'s last part, and that part."""
  parts = key.split('.')
  node = config
  for i, part in enumerate(parts):
    last = i == len(parts) - 1
    if part not in node:
      where = 'the config' if i == 0 else f'config.{".".join(parts[:i])}'
      close = difflib.get_close_matches(part, [str(k) for k in node.keys()], n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ConfigError(f'--config.{key}: {where} has no field {part!r}{hint}')
    if not last:
      node = node[part]
      if not hasattr(node, 'get_type'):
        raise ConfigError(
          f'--config.{key}: config.{".".join(parts[: i + 1])} holds a value ({type(node).__name__}), not fields'
        )
  return node, parts[-1]


def _parse(key: str, raw: str | None, kind: type) -> Any:
  """The override's value as ml_collections' config flags parse it for a field of type `kind`."""
  from absl import flags
  from ml_collections.config_flags import tuple_parser
  import ml_collections

  if kind is bool and raw is None:
    return True
  parsers = {
    bool: flags.BooleanParser(),
    int: flags.IntegerParser(),
    float: flags.FloatParser(),
    str: flags.ArgumentParser(),
    tuple: tuple_parser.TupleParser(),
  }
  if isinstance(kind, type) and issubclass(kind, ml_collections.ConfigDict):
    return _parse_dict(key, raw)
  if kind not in parsers:
    raise ConfigError(f'--config.{key}: a field of type {kind.__name__} cannot be set from the command line')
  try:
    return parsers[kind].parse(raw)
  except (TypeError, ValueError) as e:
    expected = {bool: 'true or false', int: 'an integer', float: 'a number'}.get(kind, kind.__name__)
    detail = '' if kind is bool else f' ({e})'
    raise ConfigError(f'--config.{key}={raw!r}: expected {expected}{detail}') from None


def _parse_dict(key: str, raw: str):
  import ast
  import ml_collections

  try:
    value = ast.literal_eval(raw)
  except (SyntaxError, ValueError):
    value = None
  if not isinstance(value, dict):
    raise ConfigError(f'--config.{key}={raw!r}: expected a dict literal, e.g. "{{\'relu2_2\': 1.0}}"')
  return ml_collections.ConfigDict(value)


def guard(fn: Callable, *args, user_errors: tuple[type[BaseException], ...] = (), compile_cache: bool = True):
  """fn(*args), a tool's main, with the compilation cache on (`compile_cache=False` leaves it off, for a
  tool that times compiles; JAX_COMPILATION_CACHE_DIR still applies); a UserError (or one of
  `user_errors`) is one line and exit 2, Ctrl-C exit 130."""
  if compile_cache:
    from mrisr_jax import compile_cache as cache

    cache.enable()
  return _guarded(fn, *args, user_errors=user_errors)


def _guarded(fn: Callable, *args, user_errors: tuple[type[BaseException], ...] = ()):
  """guard without the cache (run turns it on itself, once the config has loaded)."""
  try:
    return fn(*args)
  except (UserError,) + tuple(user_errors) as e:
    exit_with(e)
  except KeyboardInterrupt:
    sys.exit(130)


def tool_args(parser, argv: Sequence[str] | None = None):
  """argparse for a tool with --config: (parsed arguments, the `--config.KEY=VALUE` overrides)."""
  rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
  return parser.parse_args(rest), overrides


def parse_flags(argv: Sequence[str], overrides: list, flag_values=None) -> list[str]:
  """absl's parse of `argv` (argv[0] the program) without the overrides, which go into `overrides`;
  a bad flag is one line (a UserError)."""
  from absl import flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    # expand --flagfile first, so overrides in a flag file are found as well
    argv = flag_values.read_flags_from_files(list(argv), force_gnu=False)
    rest, found = split_overrides(argv[1:])
    overrides.extend(found)
    return flag_values([argv[0], *rest])
  except flags.Error as e:
    raise UserError(str(e)) from None


class QuietLibraries(pylogging.Filter):
  """Keeps libraries' INFO chatter (orbax's saves and closes, grain, tensorstore, jax probing for a
  TPU) off the console; their warnings still show, and `--verbosity=1` shows everything."""

  NOISY = ('/orbax/', '/grain/', '/tensorstore/', 'xla_bridge.py')

  # orbax warns at every save without a validation PSNR (saves between evaluations): expected here
  HARMLESS_WARNINGS = ('did not provide metrics',)

  def filter(self, record):
    from absl import flags

    if flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].value >= 1:
      return True
    if record.levelno >= pylogging.WARNING:
      return not any(w in str(record.msg) for w in self.HARMLESS_WARNINGS)
    return not any(n in record.pathname for n in self.NOISY)


def quiet_libraries() -> None:
  from absl import logging

  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())


def run(
  main: Callable,
  *,
  config: bool = True,
  user_errors: tuple[type[BaseException], ...] = (),
  argv: Sequence[str] | None = None,
) -> None:
  """Runs an absl entry point: main(config) (config=False: main()) after the flags the module defined.

  With config, the module defines `--config` as a string flag; it is loaded here with its overrides.
  """
  from absl import app, flags

  overrides: list = []

  def parser(args):
    try:
      return parse_flags(args, overrides)
    except UserError as e:
      exit_with(e)

  def body(args):
    from mrisr_jax import compile_cache

    quiet_libraries()
    if len(args) > 1:
      raise UserError(f'unexpected arguments: {" ".join(args[1:])}')
    loaded = load_config(flags.FLAGS['config'].value, overrides) if config else None
    compile_cache.enable()  # after the config (its errors come before jax loads), before anything compiles
    return main(loaded) if config else main()

  _guarded(app.run, body, argv, parser, user_errors=user_errors)
