"""The shared training loop: train, pruning fine-tune, distillation and QAT all call :func:`fit`.

Each epoch ends with a checkpoint in the stage's work folder (model, optimizer, schedule, best
weights); an interrupted stage resumes from it.

Under ``torchrun`` (``ctx.dist.world_size`` > 1) the model, with any ``extra`` modules, is wrapped
in DistributedDataParallel; each rank trains on its shard of the training set (DistributedSampler)
with ``batch_size / world_size`` images per step, so the global batch, the steps per epoch and the
learning-rate schedule match a one-process run. Validation is sharded too and its counts are summed
over ranks, so every rank takes the same best-epoch and early-stop decisions; only rank 0 writes
checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from compressor.core.artifacts import atomic_write
from compressor.core.config import Strict
from compressor.core.context import StageContext
from compressor.core.distributed import all_reduce_sum
from compressor.core.readers import non_finite_tensors
from compressor.errors import CompressorError, TrainingDiverged
from compressor.metrics.classification import predict

# BatchNorm momentum below this (torch's default) keeps running statistics that lag a short fine-tune.
SLOW_BN_MOMENTUM = 0.1
AUTO_RECALIBRATION_BATCHES = 20

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class TrainOptions(Strict):
    """Optimisation settings shared by every stage that trains."""

    epochs: int = Field(10, ge=1, le=10000)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    warmup_epochs: int = Field(0, ge=0)
    batch_size: int | None = Field(None, ge=1, description="Default: data.batch_size.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    early_stop_patience: int | None = Field(None, ge=1, description="Stop after this many epochs without a better val top-1.")
    amp: bool = Field(True, description="Mixed precision (bfloat16 autocast) when training on CUDA.")
    freeze_backbone_epochs: int = Field(0, ge=0, le=10000, description="Train only the classifier for this "
                                        "many first epochs (transfer learning: a new head on pretrained weights).")
    bn_recalibration: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Re-estimate BatchNorm running statistics from this many training batches before "
        "each validation (precise BN, torch.optim.swa_utils.update_bn). auto: "
        f"{AUTO_RECALIBRATION_BATCHES} batches when a BatchNorm of the model keeps a slow running average "
        "(momentum below torch's 0.1; TensorFlow ports use 0.01), whose statistics lag far behind a short "
        "fine-tune; 0: never.")


@dataclass
class FitResult:
    """``best_score`` is the best validation score of the task's primary metric (``metric``: top1, or
    rank1 / map for embeddings)."""

    best_score: float
    epochs_run: int
    resumed_from_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    metric: str = "top1"
    bn_recalibration_batches: int = 0


def _optimizer(params: list[nn.Parameter], opts: TrainOptions) -> torch.optim.Optimizer:
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay,
                           nesterov=opts.momentum > 0)


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def val_score(model: nn.Module, ctx: StageContext) -> float:
    """The task's primary metric (%) on the validation split: top-1, or rank-1 / mAP for embeddings.

    Classification under torchrun: each rank scores a slice and counts are summed. Retrieval ranks
    every query against the whole gallery, so each rank scores the whole split (the same result).
    """
    from compressor.metrics.evaluation import task_of

    task = task_of(ctx)
    images, labels = ctx.data.val_arrays()
    if task.is_embedding:
        return round(task.value(predict(model, images, ctx.device), labels), 3)
    dist = ctx.dist
    if dist.enabled:
        images, labels = images[dist.rank :: dist.world_size], labels[dist.rank :: dist.world_size]
    correct = float((predict(model, images, ctx.device).argmax(1) == labels).sum()) if len(labels) else 0.0
    correct, count = all_reduce_sum(dist, [correct, float(len(labels))], ctx.device)
    return round(correct / max(count, 1.0) * 100, 3)




def embedding_loss(model: nn.Module, ctx: StageContext) -> tuple[LossFn, nn.Module]:
    """The recipe's embedding objective for ``model``: the loss and the head module (train-only) it uses."""
    from compressor.train.embedding import objective_for

    emb = ctx.task.require_embedding()
    objective = objective_for(emb, model, len(ctx.data.classes), ctx.data.input_shape, ctx.device)

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return objective(m(x), y)

    return loss, objective


def _finite_summary(tensor: torch.Tensor) -> tuple[int, float]:
    """(count of NaN/Inf values, largest finite magnitude) of a tensor."""
    t = tensor.detach().float()
    finite = torch.isfinite(t)
    bad = int((~finite).sum())
    largest = float(t[finite].abs().max()) if bool(finite.any()) else float("nan")
    return bad, largest


def largest_weight(model: nn.Module) -> float:
    """The largest finite |w| over the model's floating parameters."""
    sizes = [_finite_summary(p)[1] for p in model.parameters() if p.is_floating_point() and p.numel()]
    return max((v for v in sizes if math.isfinite(v)), default=0.0)


def divergence_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, opts: TrainOptions,
                      num_classes: int | None, started_finite: bool = True, start_largest: float | None = None) -> str:
    """The likely causes of a NaN/Inf loss, in order (weights, data, learning rate), with the values seen.

    ``started_finite``: whether every weight was finite when training began (else the checkpoint or the
    input stage brought the NaN in); ``start_largest``: the largest |w| then, to tell weights that grew.
    """
    bad_weights = []
    largest_w, largest_name = 0.0, ""
    for name, tensor in model.named_parameters():  # buffers (running statistics) follow the data
        if not tensor.is_floating_point():
            continue
        bad, largest = _finite_summary(tensor)
        if bad:
            bad_weights.append((name, bad, tensor.numel()))
        elif largest > largest_w:
            largest_w, largest_name = largest, name
    if bad_weights:
        name, bad, size = bad_weights[0]
        more = f" and {len(bad_weights) - 1} more tensor(s)" if len(bad_weights) > 1 else ""
        when = ("already before training started: the checkpoint or the input stage brought them in"
                if not started_finite else "now, though all were finite when training started: an update blew "
                "up (see 3)")
        weights = f"1) weights: '{name}' holds {bad} NaN/Inf of {size} values{more} {when}"
    elif start_largest is not None and largest_w > 100 * max(start_largest, 1e-3):
        weights = (f"1) weights: all finite, but grown to |w| {largest_w:.3g} in '{largest_name}' (at most "
                   f"{start_largest:.3g} when training started): an update blew up (see 3)")
    else:
        weights = f"1) weights: all finite (largest |w| {largest_w:.3g} in '{largest_name}')"
    bad_x, largest_x = _finite_summary(x)
    labels = f"labels {int(y.min())}..{int(y.max())}" if y.numel() and not y.is_floating_point() else "labels"
    if num_classes is not None and y.numel() and not y.is_floating_point():
        labels += f" of {num_classes} classes"
    if bad_x:
        data = f"2) data: this batch holds {bad_x} NaN/Inf input values of {x.numel()} (check the images and preprocess.std)"
    else:
        data = f"2) data: this batch is finite (largest |x| {largest_x:.3g}, {labels})"
    lr_line = (f"3) learning rate: {lr:.3g} at this step (lr {opts.lr:g}, warmup_epochs {opts.warmup_epochs}, "
               f"grad_clip {opts.grad_clip}); try lr {opts.lr / 10:g} or grad_clip: 1.0")
    return f"likely causes, in order: {weights}; {data}; {lr_line}"


class _Joint(nn.Module):
    """The model plus extra trainable modules, so that DDP synchronises the gradients of both.

    ``forward`` is the model's; the extra modules are used by the loss function outside it.
    """

    def __init__(self, model: nn.Module, extra: nn.Module):
        super().__init__()
        self.model = model
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _wrap_ddp(model: nn.Module, extra: nn.Module | None, ctx: StageContext) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    joint = model if extra is None else _Joint(model, extra)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(joint, device_ids=device_ids)


def _sync_buffers(model: nn.Module, ctx: StageContext) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics) before evaluating and saving."""
    if ctx.dist.enabled:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _backbone_params(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` outside its classifier (see :func:`~compressor.train.models.classifier_name`)."""
    from compressor.train.models import classifier_name

    name = classifier_name(model)
    if name is None:
        msg = "freeze_backbone_epochs: the model has no Linear or Conv2d classifier to train alone"
        raise CompressorError(msg)
    head = {id(p) for p in model.get_submodule(name).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


@dataclass
class _Loop:
    """What one :func:`fit` call trains with, built before the first epoch."""

    model: nn.Module
    extra: nn.Module | None
    trained: nn.Module            # the model, or its DDP wrapper
    params: list[nn.Parameter]
    compute_loss: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batch_size: int
    sampler: Any
    pk: tuple[int, int] | None
    use_amp: bool
    backbone: list[nn.Parameter]  # frozen for the first freeze_backbone_epochs


@dataclass
class _Progress:
    """What an epoch checkpoint keeps besides weights and optimizer: where training stands."""

    epoch: int = 0
    best_score: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, model: nn.Module, epoch: int, mean_loss: float, score: float, metric: str) -> None:
        """One finished epoch: its history entry, and the best weights so far."""
        self.epoch = epoch + 1
        self.history.append({"epoch": epoch + 1, "loss": round(mean_loss, 5), f"val_{metric}": score})
        if score > self.best_score:
            self.best_score, self.bad_epochs = score, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1


def recalibration_batches(model: nn.Module, opts: TrainOptions) -> int:
    """How many training batches re-estimate BatchNorm statistics before each validation (0: none)."""
    if opts.bn_recalibration != "auto":
        return int(opts.bn_recalibration)
    slow = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               and m.momentum is not None and m.momentum < SLOW_BN_MOMENTUM for m in model.modules())
    return AUTO_RECALIBRATION_BATCHES if slow else 0


def recalibrate_bn(model: nn.Module, ctx: StageContext, batch_size: int, epoch: int, batches: int) -> None:
    """Replace every BatchNorm's running statistics with their exact average over ``batches`` training
    batches at the current weights (torch's ``update_bn``; the model's training mode is kept)."""
    import itertools

    from torch.optim.swa_utils import update_bn

    loader = ctx.data.train_loader(batch_size, epoch=epoch)
    with torch.no_grad():
        update_bn(itertools.islice(loader, batches), model, device=ctx.device)


def _objective(model: nn.Module, ctx: StageContext, opts: TrainOptions, loss_fn: LossFn | None,
               extra: nn.Module | None) -> tuple[LossFn, nn.Module | None]:
    """The loss to minimise and the extra modules it trains (an embedding's identity head among them)."""
    if loss_fn is None and ctx.task.is_embedding:
        # the identity head trains with the model but stays out of it (and out of the saved artifact)
        loss_fn, head = embedding_loss(model, ctx)
        extra = head if extra is None else nn.ModuleList([extra, head])
    criterion = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
    return loss_fn or (lambda m, x, y: criterion(m(x), y)), extra


def _batches(ctx: StageContext, opts: TrainOptions) -> tuple[int, Any, tuple[int, int] | None]:
    """(per-process batch size, distributed sampler or None, P x K sampling or None)."""
    dist = ctx.dist
    batch_size = opts.batch_size or ctx.data.config.batch_size
    sampler: Any = None
    if dist.enabled:
        from torch.utils.data import DistributedSampler

        batch_size = max(1, batch_size // dist.world_size)
        sampler = DistributedSampler(ctx.data.train, num_replicas=dist.world_size, rank=dist.rank,  # type: ignore[arg-type]
                                     shuffle=True, seed=ctx.seed, drop_last=False)
    pk_sampler = ctx.task.require_embedding().loss.sampler if ctx.task.is_embedding else None
    if pk_sampler is None:
        return batch_size, sampler, None
    if dist.enabled:
        msg = ("embedding.loss.sampler (P x K batches) runs in one process; remove it for torchrun "
               "(shuffled shards are used instead)")
        raise CompressorError(msg)
    return batch_size, sampler, (pk_sampler.identities, pk_sampler.images)


def _build_loop(model: nn.Module, ctx: StageContext, opts: TrainOptions, loss_fn: LossFn | None,
                extra: nn.Module | None) -> _Loop:
    device = ctx.device
    model.to(device)
    compute_loss, extra = _objective(model, ctx, opts, loss_fn, extra)
    if extra is not None:
        extra.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if extra is not None:
        params += [p for p in extra.parameters() if p.requires_grad]
    optimizer = _optimizer(params, opts)
    batch_size, sampler, pk = _batches(ctx, opts)
    trained = _wrap_ddp(model, extra, ctx) if ctx.dist.enabled else model
    steps_per_epoch = len(ctx.data.train_loader(batch_size, sampler=sampler, pk=pk))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(opts.epochs * steps_per_epoch, opts.warmup_epochs * steps_per_epoch)
    )
    return _Loop(model, extra, trained, params, compute_loss, optimizer, scheduler, batch_size, sampler, pk,
                 use_amp=opts.amp and device.type == "cuda",
                 backbone=_backbone_params(model) if opts.freeze_backbone_epochs else [])


def _resume(loop: _Loop, path: Path, ctx: StageContext, desc: str) -> _Progress:
    """Where the last run of this fit stopped (its epoch checkpoint), or the start; a damaged checkpoint
    costs the epochs, not the run."""
    if not path.exists():
        return _Progress()
    parts = [m for m in (loop.model, loop.extra) if m is not None]
    initial = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in parts]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        best = state["best_score"] if "best_score" in state else state["best_top1"]  # older checkpoints
        progress = _Progress(state["epoch"], best, state["best_state"], state["bad_epochs"], state["history"])
        loop.model.load_state_dict(state["model"])
        if loop.extra is not None and "extra" in state:
            loop.extra.load_state_dict(state["extra"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        if "rng" in state:  # augmentation draws continue as if the run had not stopped
            torch.set_rng_state(state["rng"])
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint costs the epochs, not the run
        for m, weights in zip(parts, initial, strict=True):
            m.load_state_dict(weights)
        ctx.log(f"{ctx.name}: epoch checkpoint {path} is unreadable ({type(err).__name__}: "
                f"{str(err)[:120]}); starting {desc} over")
        path.unlink(missing_ok=True)
        return _Progress()
    ctx.log(f"{ctx.name}: resuming {desc} from epoch {progress.epoch} checkpoint")
    return progress


def _train_epoch(loop: _Loop, ctx: StageContext, opts: TrainOptions, desc: str, epoch: int,
                 health: tuple[bool, float]) -> float:
    """One pass over the training data; returns the mean loss over every process."""
    device = ctx.device
    loader = ctx.data.train_loader(loop.batch_size, epoch=epoch, sampler=loop.sampler, pk=loop.pk)
    losses: list[float] = []
    for x, y in ctx.progress(loader, f"{desc} epoch {epoch + 1}/{opts.epochs}", total=len(loader)):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=loop.use_amp):
            loss = loop.compute_loss(loop.trained, x, y)
        if not torch.isfinite(loss):
            lr = float(loop.optimizer.param_groups[0]["lr"])
            msg = (f"{ctx.name}: {desc} loss became {loss.item()} at epoch {epoch + 1}, step {len(losses) + 1}; "
                   + divergence_report(loop.model, x, y, lr, opts, len(ctx.data.classes), *health))
            raise TrainingDiverged(msg)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if epoch < opts.freeze_backbone_epochs:
            for p in loop.backbone:  # no gradient: the optimizer leaves them as they are (no decay, no momentum)
                p.grad = None
        if opts.grad_clip is not None:
            nn.utils.clip_grad_norm_(loop.params, opts.grad_clip)
        loop.optimizer.step()
        loop.scheduler.step()
        losses.append(loss.item())
    loss_sum, loss_count = all_reduce_sum(ctx.dist, [float(np.sum(losses)), float(len(losses))], device)
    return loss_sum / max(loss_count, 1.0)


def _save_checkpoint(loop: _Loop, progress: _Progress, path: Path, ctx: StageContext) -> None:
    snapshot: dict[str, Any] = {
        "epoch": progress.epoch, "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(), "best_score": progress.best_score,
        "best_state": progress.best_state, "bad_epochs": progress.bad_epochs, "history": progress.history,
        "rng": torch.get_rng_state(),
    }
    if loop.extra is not None:
        snapshot["extra"] = loop.extra.state_dict()
    if ctx.dist.is_main:
        atomic_write(path, lambda tmp: torch.save(snapshot, tmp))


def fit(
    model: nn.Module,
    ctx: StageContext,
    opts: TrainOptions,
    loss_fn: LossFn | None = None,
    extra: nn.Module | None = None,
    desc: str = "train",
    epoch_start: Callable[[int, nn.Module], None] | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the weights with the best validation score.

    Each epoch ends with a validation score and a checkpoint in the stage's work folder, so an interrupted
    stage resumes from its last epoch (random state included).

    Args:
        model: the model to train.
        ctx: stage context (data, device, work folder for epoch checkpoints, progress).
        opts: optimisation settings.
        loss_fn: ``loss_fn(model, images, labels) -> loss``; default cross-entropy with label smoothing.
        extra: further trainable modules (e.g. distillation adapters), optimised and checkpointed too.
        desc: label for progress bars and checkpoint files (one stage may call fit several times).
        epoch_start: called as ``epoch_start(epoch, model)`` (epoch counted from 0) after the model is put
            in training mode, before the epoch's first step (QAT freezes BatchNorm statistics there).
    """
    from compressor.metrics.evaluation import task_of

    torch.manual_seed(ctx.seed)
    task = task_of(ctx)
    loop = _build_loop(model, ctx, opts, loss_fn, extra)
    checkpoint = ctx.work_dir / f"{desc}-last.pt"
    progress = _resume(loop, checkpoint, ctx, desc)
    start_epoch = progress.epoch
    health = (not non_finite_tensors(model.state_dict()), largest_weight(model))  # for a NaN loss's report
    recalibrate = recalibration_batches(model, opts)
    if recalibrate and start_epoch < opts.epochs:
        ctx.log(f"{ctx.name}: {desc}: BatchNorm statistics re-estimated from {recalibrate} training batches "
                "before each validation (bn_recalibration)")
    for epoch in range(start_epoch, opts.epochs):
        for m in (model, loop.extra):
            if m is not None:
                m.train()
        if epoch_start is not None:
            epoch_start(epoch, model)
        if loop.sampler is not None:
            loop.sampler.set_epoch(epoch)
        mean_loss = _train_epoch(loop, ctx, opts, desc, epoch, health)
        if recalibrate:
            recalibrate_bn(model, ctx, loop.batch_size, epoch, recalibrate)
        _sync_buffers(model, ctx)
        score = val_score(model, ctx)
        progress.record(model, epoch, mean_loss, score, task.primary)
        _save_checkpoint(loop, progress, checkpoint, ctx)
        ctx.log(f"{ctx.name}: {desc} epoch {epoch + 1}/{opts.epochs} loss {mean_loss:.4f} val {task.label} {score:.2f}")
        if opts.early_stop_patience is not None and progress.bad_epochs >= opts.early_stop_patience:
            ctx.log(f"{ctx.name}: early stop after epoch {epoch + 1} ({progress.bad_epochs} epochs without "
                    "improvement)")
            break
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    model.eval()
    return FitResult(best_score=progress.best_score, epochs_run=len(progress.history), resumed_from_epoch=start_epoch,
                     history=progress.history, metric=task.primary, bn_recalibration_batches=recalibrate)
