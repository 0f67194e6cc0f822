"""Test session set-up: one persistent XLA compilation cache for every test process.

Many tests compile the same small train steps again (resumed runs, several processes, subprocess
CLIs); JAX's persistent cache turns those repeats into a disk read. Set before jax is imported, and
inherited by the subprocesses the tests start. JAX_COMPILATION_CACHE_DIR set by the caller wins.
"""

import os
import tempfile

os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), f'mrisr_jax_test_xla_cache_{os.getuid()}')
)

import pytest

TIERS = ('unit', 'integration', 'e2e')  # pyproject.toml describes them; README names the fast command


def _closest_tiers(item) -> list:
  """A test's tier markers: its own (function or parametrize id), else its class's, else its module's
  `pytestmark`. A test's own tier replaces its module's: that is how a module overrides one test."""
  for node in item.listchain()[::-1]:
    own = [m for m in node.own_markers if m.name in TIERS]
    if own:
      return own
  return []


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
  """A test file (or class) with a test that has no tier, or two, is a collection error naming the
  tests, with or without xdist and whatever `-m` selects, so a new test cannot forget its tier."""
  report = yield
  if report.passed and isinstance(collector, (pytest.Module, pytest.Class)):
    bad = [
      f'{item.nodeid}: {" + ".join(m.name for m in tiers) or "no tier marker"}'
      for item in report.result
      if isinstance(item, pytest.Function)
      if len(tiers := _closest_tiers(item)) != 1
    ]
    if bad:
      report.outcome, report.result = 'failed', []
      report.longrepr = (
        f'every test needs exactly one tier marker of {", ".join(TIERS)}: a module '
        '`pytestmark = pytest.mark.unit` (say) plus `@pytest.mark.integration` on the tests '
        'that differ (the tiers: pyproject.toml, README "The two commands"):\n  ' + '\n  '.join(bad)
      )
  return report


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
  """Each test's one tier moves onto the test itself, so `-m unit` does not also see the module's
  tier on a test that overrides it."""
  tiers = {item: _closest_tiers(item) for item in items}
  for item in items:
    for node in item.listchain()[:-1]:
      node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
  for item, found in tiers.items():
    if len(found) == 1 and not any(m.name in TIERS for m in item.own_markers):
      item.add_marker(found[0].name)

  # the files with the longest tests first (e2e, then integration), each file kept whole so its
  # module fixtures are built once: the workers then end on short unit tests instead of one of them
  # running a long test alone at the end
  def tier_rank(item) -> int:
    tier = next((m.name for m in item.own_markers if m.name in TIERS), 'unit')
    return {'e2e': 0, 'integration': 1}.get(tier, 2)

  rank, first = {}, {}
  for i, item in enumerate(items):
    rank[item.path] = min(rank.get(item.path, 2), tier_rank(item))
    first.setdefault(item.path, i)
  items.sort(key=lambda item: (rank[item.path], first[item.path], tier_rank(item)))
