from __future__ import annotations

import pytest
from pydantic import ValidationError

from etchr.settings import EditorSettings


def test_env_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHR_API_KEYS", " k1, k2 ,,")
    monkeypatch.setenv("ETCHR_EDITOR_LORA", "/a/lora.safetensors,/b")
    monkeypatch.setenv("ETCHR_EDITOR_STEPS", "12")
    settings = EditorSettings()
    assert settings.api_keys == ["k1", "k2"]
    assert settings.editor_lora == ["/a/lora.safetensors", "/b"]
    assert settings.editor_steps == 12


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ETCHR_API_KEYS", "ETCHR_EDITOR_STEPS", "ETCHR_EDITOR_GUIDANCE", "ETCHR_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = EditorSettings(_env_file=None)
    assert settings.redis_url == "redis://localhost:6379/0"
    assert (settings.editor_steps, settings.editor_guidance, settings.editor_device) == (40, 3.5, "auto")
    assert settings.api_keys == []


def test_dotenv_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETCHR_EDITOR_MAX_BATCH", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("ETCHR_EDITOR_MAX_BATCH=8\n")
    assert EditorSettings(_env_file=env_file).editor_max_batch == 8


def test_invalid_values_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHR_EDITOR_STEPS", "0")
    with pytest.raises(ValidationError, match="editor_steps"):
        EditorSettings()


def test_warmup_sizes_are_comma_separated_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCHR_EDITOR_WARMUP_SIZES", " 512, 1024,")
    assert EditorSettings(_env_file=None).editor_warmup_sizes == [512, 1024]
    for bad in ("0", "512,big", "9000"):
        monkeypatch.setenv("ETCHR_EDITOR_WARMUP_SIZES", bad)
        with pytest.raises(ValidationError, match="editor_warmup_sizes"):
            EditorSettings(_env_file=None)
