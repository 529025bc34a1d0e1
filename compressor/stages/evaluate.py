"""``evaluate``: the task's metrics of a PyTorch model on the validation split.

Classification: top-1, top-5 and the confusion matrix. Embedding: rank-1, rank-5 and mAP over the
seeded query/gallery split of the validation identities.
"""

from __future__ import annotations

from pydantic import Field

from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.metrics.classification import predict
from compressor.metrics.evaluation import task_of
from compressor.train.models import load_stage_model


class EvaluateConfig(StageConfig):
    images: int | None = Field(None, ge=1, description="Evaluate on an even slice of this many images (default: all).")


def run_evaluate(cfg: EvaluateConfig, ctx: StageContext) -> StageOutput:
    model = load_stage_model(ctx, ctx.input)
    images, labels = ctx.data.val_arrays(cfg.images)
    outputs = predict(model, images, ctx.device)
    metrics = task_of(ctx).score(outputs, labels)
    metrics["classes"] = ctx.data.classes
    return StageOutput(ctx.input, metrics)
