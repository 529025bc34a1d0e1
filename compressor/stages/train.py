"""``train``: train a model on the recipe's data with the shared loop."""

from __future__ import annotations

from compressor.config import StageConfig
from compressor.context import StageContext, StageOutput, load_model, save_model
from compressor.training import TrainOptions, fit


class TrainConfig(StageConfig, TrainOptions):
    """Options of the ``train`` stage: the shared optimisation settings."""


def run_train(cfg: TrainConfig, ctx: StageContext) -> StageOutput:
    model = load_model(ctx, ctx.input)
    result = fit(model, ctx, cfg)
    artifact = save_model(ctx, model, ctx.input.meta)
    return StageOutput(artifact, {
        f"val_{result.metric}": result.best_top1, "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch, "history": result.history,
        "macs": artifact.meta["macs"], "params": artifact.meta["params"],
    })
