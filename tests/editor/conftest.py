"""Editor fixtures: the tiny checkpoint through the real loader (``tiny_editor_dir`` is in tests/).

Imports of torch/diffusers stay inside the fixtures so test files that never touch the model collect fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from etchr_editor.model import LoadedEditor


@pytest.fixture(scope="session")
def tiny_editor(tiny_editor_dir: Path) -> LoadedEditor:
    """The tiny checkpoint through the real loader, float32 on CPU. Shared: never mutate its weights."""
    from etchr_editor.model import load_editor

    return load_editor(str(tiny_editor_dir), device="cpu")
