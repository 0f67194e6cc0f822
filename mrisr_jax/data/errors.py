"""The one exception type the data layer raises for bad inputs."""

from __future__ import annotations

from mrisr_jax.errors import UserError


class OneLineError(UserError, ValueError):
  """A user-facing error: one line naming the file, key, option or value at fault."""

  def __init__(self, message: str):
    # Exceptions from h5py/numpy/nibabel can carry newlines; keep ours to one line.
    super().__init__(' '.join(str(message).split()))


class DataError(OneLineError):
  """One line: '<path>: <problem>' naming the file, key or value at fault."""


def one_line(err: BaseException) -> str:
  """`type: message` of an arbitrary exception, squeezed onto one line."""
  text = ' '.join(str(err).split())
  return f'{type(err).__name__}: {text}' if text else type(err).__name__
