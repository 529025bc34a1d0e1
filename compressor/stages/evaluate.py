"""``evaluate``: top-1, top-5 and the confusion matrix of a PyTorch model on the validation split."""

from __future__ import annotations

from pydantic import Field

from compressor.config import StageConfig
from compressor.context import StageContext, StageOutput, load_model
from compressor.metrics import classification_metrics, predict


class EvaluateConfig(StageConfig):
    images: int | None = Field(None, ge=1, description="Evaluate on an even slice of this many images (default: all).")


def run_evaluate(cfg: EvaluateConfig, ctx: StageContext) -> StageOutput:
    model = load_model(ctx, ctx.input)
    images, labels = ctx.data.val_arrays(cfg.images)
    logits = predict(model, images, ctx.device)
    metrics = classification_metrics(logits, labels, len(ctx.data.classes))
    metrics["classes"] = ctx.data.classes
    return StageOutput(ctx.input, metrics)
