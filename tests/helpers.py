"""Small helpers shared by test modules (import as ``from helpers import ...``)."""
from __future__ import annotations

from typing import Callable

import pytest

from trustvision.errors import TrustVisionError


def error(fn: Callable[[], object]) -> str:
    """The TrustVisionError message of ``fn()``; it must be a single line."""
    with pytest.raises(TrustVisionError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg
