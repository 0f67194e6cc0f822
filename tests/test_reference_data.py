"""The vendored reference contract (tests/data/): the file its provenance note describes, never missing."""

import hashlib
import json
import re

import pytest

from tests.helpers import REFERENCE_JSON, REPO

pytestmark = pytest.mark.unit


def test_vendored_contract_is_the_file_its_provenance_note_names():
  note = (REPO / 'tests' / 'data' / 'README.md').read_text()
  recorded = re.search(r'sha256 `([0-9a-f]{64})`', note).group(1)
  data = REFERENCE_JSON.read_bytes()
  assert hashlib.sha256(data).hexdigest() == recorded, 'update tests/data/README.md with the new sha256'
  names = set(json.loads(data))
  assert {'casr_x4', 'casr_x2_small', 'discriminator', 'edsr_x4', 'rdn_x4', 'drrn', 'srcnn'} <= names
  # where the shared reference folder sits beside the repository, the copy must still equal it
  shared = REPO.parent / 'shared' / 'reference' / 'reference_state_dicts.json'
  if shared.exists():
    assert shared.read_bytes() == data, f'{shared} changed: copy it to tests/data/ (tests/data/README.md)'
