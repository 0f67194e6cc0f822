"""Every entry point answers --help, listing and explaining every flag its source defines."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration  # every test runs a CLI in a subprocess

MODULES = ['main', 'export', 'import_torch', 'infer', 'evaluate']
TOOLS = sorted(p.name for p in (REPO / 'tools').glob('*.py'))


def _help(command: list[str]) -> str:
  # timeout: a hang guard, not a speed test (the slowest --help takes ~10 s on 2 busy cores)
  proc = subprocess.run(
    [sys.executable, *command, '--help'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=180,
    env={'TF_CPP_MIN_LOG_LEVEL': '3', **__import__('os').environ},
  )
  text = proc.stdout + proc.stderr
  assert 'Traceback' not in text, text[-3000:]
  return text


@pytest.mark.parametrize('module', MODULES)
def test_module_help_explains_every_flag(module):
  source = (REPO / 'mrisr_jax' / f'{module}.py').read_text()
  names = re.findall(r"DEFINE_\w+\(\s*'(\w+)'", source)
  assert names, module
  text = _help(['-m', f'mrisr_jax.{module}'])
  for name in names:  # absl prints "--name: help" (bools: "--[no]name: help")
    assert re.search(rf'--(\[no\])?{name}: \S', text), (module, name)


@pytest.mark.parametrize('tool', TOOLS)
def test_tool_help_explains_every_option(tool):
  source = (REPO / 'tools' / tool).read_text()
  options = re.findall(r"add_argument\(\s*'(--[\w-]+)'", source)
  assert options, f'{tool} defines no options (every tool takes at least --help-documented options)'
  text = _help([f'tools/{tool}'])
  for option in options:  # argparse: "--name ARG   help" or a wrapped help on the next line
    assert re.search(rf'{option}\b[^\n]*\n?\s+\S', text), (tool, option)
  assert 'usage:' in text
