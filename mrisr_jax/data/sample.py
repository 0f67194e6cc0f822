"""The small real-MRI sample that ships inside the package (see sample_data/README.md)."""

from __future__ import annotations

import pathlib

from mrisr_jax.data.errors import DataError

SAMPLE_DIR: pathlib.Path = pathlib.Path(__file__).resolve().parent.parent / 'sample_data'


def resolve_data_root(root: str) -> tuple[pathlib.Path, bool]:
  """Maps the configured data root to a directory.

  Args:
    root: a directory path, or '' for the embedded sample data.

  Returns:
    (directory, is_sample): ('' -> (SAMPLE_DIR, True)); otherwise (Path(root), False).

  Raises:
    DataError: the directory does not exist.
  """
  if root is None or str(root).strip() == '':
    if not SAMPLE_DIR.is_dir():
      raise DataError(
        f'{SAMPLE_DIR}: the embedded sample data directory is missing '
        '(regenerate it with: python tools/make_sample_data.py)'
      )
    return SAMPLE_DIR, True
  path = pathlib.Path(str(root)).expanduser()
  if not path.exists():
    raise DataError(f'{path}: data root directory does not exist (data.root={str(root)!r})')
  if not path.is_dir():
    raise DataError(f'{path}: data root is not a directory (data.root={str(root)!r})')
  return path, False
