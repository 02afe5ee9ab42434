"""Editor test fixtures: the tiny random-init Flux2Klein checkpoint (SPEC §7), built once per test process.

Imports of torch/diffusers stay inside the fixtures so test files that never touch the model collect fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from etchr_editor.model import LoadedEditor


@pytest.fixture(scope="session")
def tiny_editor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Flux2KleinPipeline checkpoint on disk (``save_pretrained`` layout), seed 0."""
    from etchr_editor.tiny import save_tiny_editor

    return save_tiny_editor(tmp_path_factory.mktemp("tiny-editor"))


@pytest.fixture(scope="session")
def tiny_editor(tiny_editor_dir: Path) -> LoadedEditor:
    """The tiny checkpoint through the real loader, float32 on CPU. Shared: never mutate its weights."""
    from etchr_editor.model import load_editor

    return load_editor(str(tiny_editor_dir), device="cpu")
