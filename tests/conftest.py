import os
import sys

import pytest

# tests import shared helpers (opcheck, zoo) as top-level modules
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def registry_snapshot():
    """Leave the global pass registry as it was, whatever a test registers."""
    from circ.passbase import builtin_registry

    before = dict(builtin_registry())
    yield
    builtin_registry().clear()
    builtin_registry().update(before)
