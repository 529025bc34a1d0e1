"""The registry: every entry imports, has a strict frozen config, and lookups list what exists."""

from __future__ import annotations

import pydantic
import pytest

from compressor.errors import BackendError
from compressor.registry import STAGES, UnknownStageType, get_stage
from compressor.runtime.backends import BACKENDS, get_backend


@pytest.mark.parametrize("stage_type", sorted(STAGES))
def test_entry_is_strict_and_frozen(stage_type: str) -> None:
    entry = STAGES[stage_type]
    assert callable(entry.run)
    cfg = entry.config(name="x")
    with pytest.raises(pydantic.ValidationError):
        entry.config(name="x", no_such_option=1)
    with pytest.raises(pydantic.ValidationError):
        cfg.name = "y"  # type: ignore[misc]
    assert entry.accepts
    assert "input" in entry.refs


def test_unknown_type_lists_known() -> None:
    with pytest.raises(UnknownStageType, match=r'unknown stage type "trian" \(did you mean "train"\?\); known types: '):
        get_stage("trian")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backends_import(name: str) -> None:
    backend = get_backend(name)
    assert backend.name == name


def test_unknown_backend() -> None:
    with pytest.raises(BackendError, match='unknown backend "onnxrt"'):
        get_backend("onnxrt")
