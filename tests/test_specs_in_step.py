"""The copies of the contracts under tests/specs stay the same as the shared folder's, where one is beside
the checkout (a user's clone has none: the tests read the copies)."""

from pathlib import Path

import pytest

COPIES = Path(__file__).parent / "specs"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "specs"


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared/specs beside this checkout")
@pytest.mark.parametrize("name", sorted(p.name for p in COPIES.iterdir()))
def test_the_copy_matches_the_shared_spec(name):
    assert (COPIES / name).read_bytes() == (SHARED / name).read_bytes(), (
        f"tests/specs/{name} differs from shared/specs/{name}: copy it again"
    )
