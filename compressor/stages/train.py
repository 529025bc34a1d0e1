"""``train``: train a model on the recipe's data with the shared loop."""

from __future__ import annotations

from compressor.core.config import StageConfig
from compressor.core.context import StageContext, StageOutput
from compressor.train.fit import TrainOptions, fit
from compressor.train.models import load_stage_model, save_stage_model


class TrainConfig(StageConfig, TrainOptions):
    """Options of the ``train`` stage: the shared optimisation settings."""


def run_train(cfg: TrainConfig, ctx: StageContext) -> StageOutput:
    model = load_stage_model(ctx, ctx.input)
    result = fit(model, ctx, cfg)
    artifact = save_stage_model(ctx, model, ctx.input.meta)
    return StageOutput(artifact, {
        f"val_{result.metric}": result.best_score, "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch, "history": result.history,
        "bn_recalibration_batches": result.bn_recalibration_batches,
        "macs": artifact.meta["macs"], "params": artifact.meta["params"],
    })
