"""The model card of a release bundle, rendered from the bundle's manifest (so it can be regenerated)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compressor.core.config import Strict
from compressor.release.gates import GateResult, gate_table, row_target


class CardConfig(Strict):
    """The recipe's optional ``card:`` section: what only a person can say about the model."""

    intended_use: str | None = Field(None, description="Who should use the model, for what (default: derived).")
    limitations: list[str] = Field(default_factory=list, description="Known limitations, added to derived ones.")


def _size(stage: dict[str, Any]) -> int:
    return sum(int(f.get("size", 0)) for f in stage.get("files", []))


def _top1_of(name: str, stages: list[dict[str, Any]], rows: list[dict[str, Any]],
             inputs: dict[str, Any]) -> float | None:
    """Best recorded top-1 of a stage's artifact: a benchmark row, an evaluate stage, or training."""
    for row in rows:
        if row.get("stage") == name and row.get("status") == "ok" and row.get("top1") is not None:
            return float(row["top1"])
    for st in stages:
        if inputs.get(st["name"]) == name and st["type"] == "evaluate" and "top1" in st.get("metrics", {}):
            return float(st["metrics"]["top1"])
    own = next((st for st in stages if st["name"] == name), None)
    if own is not None and isinstance(own.get("metrics", {}).get("val_top1"), int | float):
        return float(own["metrics"]["val_top1"])
    return None


def compression_history(run_stages: list[dict[str, Any]], recipe_stages: list[dict[str, Any]],
                        rows: list[dict[str, Any]], artifact: str) -> list[dict[str, Any]]:
    """The chain of artifacts that led to ``artifact``, oldest first: teacher -> pruned -> ... -> INT8.

    Stages that only measure (their artifact is their input's) are left out; the recipe's ``input``
    references give the chain.
    """
    inputs = {s["name"]: s.get("input") for s in recipe_stages}
    by_name = {st["name"]: st for st in run_stages}
    walk: list[dict[str, Any]] = []
    name: str | None = artifact
    while name is not None and name in by_name and len(walk) <= len(by_name):
        walk.append(by_name[name])
        name = inputs.get(name)
    chain: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    for st in reversed(walk):  # oldest first, so a measuring stage defers to the stage that made its artifact
        art = st.get("artifact", {})
        if art.get("id") in seen_ids:
            continue
        seen_ids.add(art.get("id", ""))
        meta = art.get("meta", {})
        chain.append({
            "stage": st["name"], "type": st["type"], "kind": art.get("kind"),
            "format": meta.get("format", art.get("kind")), "precision": meta.get("precision", "fp32"),
            "macs": meta.get("macs"), "params": meta.get("params"), "size_bytes": _size(st),
            "top1": _top1_of(st["name"], run_stages, rows, inputs),
        })
    return chain


def _num(value: Any, fmt: str = "{:,}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "-"


def _derived_limitations(manifest: dict[str, Any]) -> list[str]:
    env = manifest.get("environment", {})
    cpu = env.get("cpu", {})
    data = manifest.get("data") or {}
    notes = []
    images = sorted({int(c["images"]) for c in manifest.get("accuracy_checks", [])})
    if images:
        notes.append(f"Accuracy was measured on {', '.join(map(str, images))} validation images of "
                     f"{data.get('source', 'the data set')}; it says nothing about other data distributions.")
    notes.append(f"Latency was measured on {cpu.get('model', 'an unknown CPU')} with {env.get('threads')} "
                 "thread(s); other hardware, thread counts and concurrent load give other figures.")
    if any(r.get("precision") == "int8" for r in manifest.get("measurements", [])) and \
            cpu.get("int8_dot_product") == "no int8 dot-product":
        notes.append("This CPU has no INT8 dot-product instructions (VNNI/dotprod): INT8 artifacts may be "
                     "slower, and can be less accurate through saturation, than on CPUs that have them.")
    benches = {r.get("bench") for r in manifest.get("measurements", [])}
    for st in manifest.get("stages", []):
        if st["name"] in benches and st.get("reused"):
            notes.append(f"The figures of benchmark stage {st['name']} come from the stage cache (measured "
                         f"{st.get('created') or 'earlier'}), possibly on another machine than the one above; "
                         "delete its cache folder to measure again.")
    if manifest.get("recipe", {}).get("data", {}).get("train_per_class"):
        notes.append("Trained on a per-class subset of the training split.")
    return notes


def render_card(manifest: dict[str, Any]) -> str:
    """Markdown model card: intended use, data, preprocessing, classes, accuracy and latency per
    target, known limitations, compression history, gates."""
    recipe = manifest["recipe"]
    data = manifest.get("data") or {}
    card = CardConfig.model_validate(recipe.get("card") or {})
    classes = data.get("classes", [])
    pre = data.get("preprocess", {})
    status = "releasable" if manifest["releasable"] else "NOT releasable (a gate failed)"
    shipped = [a["stage"] for a in manifest["artifacts"]]
    intended = card.intended_use or (
        f"Image classification into {len(classes)} classes on images preprocessed exactly as below, "
        f"on CPUs like the one measured. Ships: {', '.join(shipped)}.")
    lines = [
        f"# Model card: {recipe['name']} {manifest['version']}", "",
        f"Status: **{status}**. Released {manifest['created']} with compressor {manifest['compressor']}.", "",
        "## Intended use", "", intended, "",
        "## Data", "",
        f"- {data.get('source')} at `{data.get('path')}`: {data.get('train_images')} training and "
        f"{data.get('val_images')} validation images, seed {recipe.get('seed')}.", "",
        "## Preprocessing", "",
        f"- Input {data.get('input_shape')} (NCHW float32), resize {pre.get('resize')}, crop {pre.get('crop')}, "
        f"channels {pre.get('channels')}, mean {pre.get('mean')}, std {pre.get('std')}.", "",
        "## Classes", "", ", ".join(f"{i}: {c}" for i, c in enumerate(classes)) or "-", "",
        "## Accuracy and latency per target", "",
        "| artifact | target | format | precision | backend | batch | top-1 | median ms | p90 ms | size (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in manifest.get("measurements", []):
        if r.get("status") != "ok":
            lines.append(f"| {r['stage']} | {row_target(r)} | {r.get('format')} | {r.get('precision')} | "
                         f"{r.get('backend')} | {r.get('batch')} | {r.get('status')}: {r.get('reason', '')} | - | - | - |")
            continue
        lines.append(
            f"| {r['stage']} | {row_target(r)} | {r.get('format')} | {r.get('precision')} | {r.get('backend')} | "
            f"{r.get('batch')} | {_num(r.get('top1'), '{:.2f}')} | {_num(r.get('median_ms'), '{:.3f}')} | "
            f"{_num(r.get('p90_ms'), '{:.3f}')} | {_num(r.get('size_bytes', 0) / 1e6, '{:.2f}')} |")
    lines += ["", "## Known limitations", ""]
    lines += [f"- {note}" for note in [*card.limitations, *_derived_limitations(manifest)]]
    lines += ["", "## Compression history", ""]
    for artifact, chain in manifest.get("history", {}).items():
        lines.append(f"**{artifact}**: " + " → ".join(f"{s['stage']} ({s['type']})" for s in chain))
        lines += ["", "| step | stage type | format | precision | MACs | params | size (MB) | top-1 |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in chain:
            lines.append(f"| {s['stage']} | {s['type']} | {s['format']} | {s['precision']} | {_num(s['macs'])} | "
                         f"{_num(s['params'])} | {s['size_bytes'] / 1e6:.2f} | {_num(s['top1'], '{:.2f}')} |")
        lines.append("")
    results = [GateResult(**g) for g in manifest.get("gates", [])]
    lines += ["## Release gates", "", gate_table(results) if results else "No gates.", ""]
    baseline = manifest.get("baseline")
    if baseline:
        lines += [f"Compared with the baseline release {baseline.get('version')} ({baseline.get('path')}).", ""]
    return "\n".join(lines)
