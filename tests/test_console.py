"""The console shows our own lines; what third-party code prints inside a stage goes to its stage.log."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from compressor.core.console import third_party_output_to
from compressor.recipe import validate_document
from compressor.registry import STAGES
from tests.conftest import TINY_RECIPE, needs_fmnist


def _noisy(ctx: Any) -> None:
    ctx.log(f"{ctx.name}: our own line")
    print("[START] a converter's progress line")          # Python-level stdout
    os.write(1, b"oneDNN notice from C++ on fd 1\n")        # C-level stdout
    os.write(2, b"TensorFlow notice from C++ on fd 2\n")    # C-level stderr
    warnings.warn("a library's warning", UserWarning, stacklevel=1)


def test_third_party_output_goes_to_the_log_and_our_lines_to_the_console(tmp_path: Path,
                                                                       capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "stage.log"

    class Ctx:
        name = "stage"

        @staticmethod
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

    with third_party_output_to(log) as console:
        ctx = Ctx()
        ctx.log = console.ours(lambda msg: print(msg))  # type: ignore[method-assign]  # a log that prints to stdout
        _noisy(ctx)
    out, err = capfd.readouterr()
    assert "our own line" in out + err
    chatter = log.read_text()
    for line in ("[START]", "oneDNN notice", "TensorFlow notice", "a library's warning"):
        assert line in chatter and line not in out + err
    print("after")  # the descriptors are back
    assert "after" in capfd.readouterr().out


@needs_fmnist
def test_a_stage_keeps_its_converters_chatter_in_the_cache(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from compressor.engine import run_recipe

    entry = STAGES["evaluate"]

    def noisy_evaluate(cfg: Any, ctx: Any) -> Any:
        _noisy(ctx)
        return entry.run(cfg, ctx)

    registry = {**STAGES, "evaluate": dataclasses.replace(entry, run=noisy_evaluate)}
    doc = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(tmp_path / "run")
    doc["stages"] = doc["stages"][:2]
    recipe = validate_document(doc, registry=registry)
    result = run_recipe(recipe, log=print, show_progress=False, registry=registry)  # the default log: stdout
    out, err = capfd.readouterr()
    assert "evaluate: our own line" in out
    assert "[START]" not in out + err and "TensorFlow notice" not in out + err
    stage = json.loads(result.manifest_path.read_text())["stages"][-1]
    log = tmp_path / "run" / "cache" / stage["key"] / "stage.log"
    assert "[START]" in log.read_text() and "TensorFlow notice" in log.read_text()
    # --verbose keeps it on the console
    doc["stages"][1]["images"] = 10
    run_recipe(validate_document(doc, registry=registry), log=lambda m: None, show_progress=False,
               registry=registry, verbose=True)
    out, err = capfd.readouterr()
    assert "[START]" in out and "TensorFlow notice" in err


def test_a_logging_handler_made_inside_a_stage_outlives_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch adds a StreamHandler on sys.stderr when NNCF imports it inside a stage; the stream it held was
    # closed when the stage ended, and the next warning printed "--- Logging error ---" with a traceback
    console = os.fdopen(2, "w", buffering=1, closefd=False)  # the process's own stderr, as on a terminal
    monkeypatch.setattr(sys, "stderr", console)
    logger = logging.getLogger("compressor-test-late-handler")
    with third_party_output_to(tmp_path / "stage.log"):
        handler = logging.StreamHandler()  # on the block's sys.stderr
        logger.addHandler(handler)
    try:
        assert handler.stream is console
        errors: list[Any] = []
        monkeypatch.setattr(handler, "handleError", lambda record: errors.append(record))
        logger.warning("a library's warning after the stage")
        assert errors == []
    finally:
        logger.removeHandler(handler)
        console.close()
