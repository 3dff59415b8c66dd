"""The train stage: ``RUN/dataset`` -> ``RUN/train/`` (adapter, checkpoints, metrics, plots).

Layout of ``RUN/train``:
  checkpoints/checkpoint-N/   complete checkpoints (each marked papertune_complete.json)
  adapter/                    the final LoRA adapter (safetensors), tokenizer and chat template
  merged/                     the adapter merged into a 16-bit base model (train.merge_16bit)
  best_checkpoint.json        the checkpoint with the lowest validation loss
  metrics.jsonl, tensorboard/ every log and evaluation
  loss_curve.png, loss_table.md, report.json, fingerprint.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from papertune.config import PapertuneConfig, TrainConfig
from papertune.errors import ConfigError, InputError, PreemptedError
from papertune.rundir import (
    BUILD_REPORT,
    DATASET,
    TRAIN_ADAPTER,
    TRAIN_BEST_CHECKPOINT,
    TRAIN_CHECKPOINTS,
    TRAIN_DIR,
    TRAIN_FINGERPRINT,
    TRAIN_LOSS_CURVE,
    TRAIN_LOSS_TABLE,
    TRAIN_MERGED,
    TRAIN_METRICS,
    TRAIN_PLANNED_ROWS,
    TRAIN_REPORT,
    atomic_dir,
    read_jsonl,
    record_stage,
    write_json_atomic,
    write_text_atomic,
)
from papertune.stage import CommandOption, StageSpec, run_files
from papertune.train.losses import loss_table, render_loss_table

log = logging.getLogger(__name__)


def sft_config(cfg: TrainConfig, checkpoints_dir: Path, has_cuda: bool, bf16: bool) -> Any:
    """TRL's ``SFTConfig`` for ``cfg``, checkpointing into ``checkpoints_dir`` (the benchmarks build theirs here too)."""
    from trl import SFTConfig

    strategy = cfg.eval_strategy
    kwargs: dict[str, Any] = dict(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        optim=cfg.optim,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy=strategy,
        save_strategy=strategy,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        bf16=has_cuda and bf16,
        fp16=has_cuda and not bf16,
        # Packed rows hold whole examples (longer ones were left out by load_training_data).
        max_length=(cfg.packed_length or cfg.max_seq_length) if cfg.packing else cfg.max_seq_length,
        completion_only_loss=False,  # the labels column already masks the prompt (train/data.py)
        packing=cfg.packing,
        padding_free=cfg.packing,
        dataset_num_proc=None,
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=False,  # applied when the model is loaded (backend-specific)
        save_only_model=False,
        remove_unused_columns=True,
        use_cpu=not has_cuda,
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used in every step
        # A non-finite loss stops the run (PapertuneSFTTrainer.training_step) before the Trainer's filter
        # would see it; the filter's check only added a wait on the GPU to every micro-batch.
        logging_nan_inf_filter=False,
        # Batches collated in worker processes, ahead of the GPU: a step's kernels are launched from one
        # Python thread, and collating in it leaves the GPU idle meanwhile.
        dataloader_num_workers=cfg.dataloader_workers,
        dataloader_persistent_workers=cfg.dataloader_workers > 0,
        # Batches copied to the GPU from pinned memory without blocking: a blocking copy waits for the GPU
        # to finish the previous step first, and the CPU then starts the next step's kernels late.
        dataloader_pin_memory=has_cuda,
        accelerator_config={"non_blocking": has_cuda},
    )
    if cfg.packing:
        kwargs["packing_strategy"] = "bfd"  # best-fit decreasing: whole examples, few half-empty rows
        # Every packed row padded to the same length: steady shapes let the allocator reuse its blocks
        # (1.3x the tokens/s of ragged rows on an H200, docs/benchmarks.md). The padding is its own
        # one-token sequences without labels, so it changes no loss.
        kwargs["pad_to_multiple_of"] = kwargs["max_length"]
    if strategy == "steps":
        kwargs["eval_steps"] = cfg.eval_steps
        kwargs["save_steps"] = cfg.eval_steps
    # transformers 5.x folds warmup_ratio into warmup_steps (a float below 1 is a ratio); older ones have both.
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    if "warmup_ratio" not in fields:
        kwargs["warmup_steps"] = kwargs.pop("warmup_ratio")
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        raise RuntimeError(f"this TRL/transformers version lacks SFTConfig fields {unknown}; see papertune's requirements")
    return SFTConfig(**kwargs)


def build_trainer(cfg: TrainConfig, backend: str, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any,
                  args: Any, callbacks: list[Any] | None = None) -> Any:
    """papertune's SFTTrainer for ``model`` as ``papertune train`` runs it (also used by the benchmarks):
    the backend's loss path and float32 LoRA master weights."""
    import torch

    from papertune.train.fast import SequenceBoundsCollator, resolve_fused_cross_entropy, skip_lora_input_casts
    from papertune.train.trainer import PapertuneSFTTrainer, set_trainable_dtype

    trainer = PapertuneSFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                  processing_class=tokenizer, callbacks=callbacks)
    if cfg.packing:  # the varlen attention needs each packed row's sequence bounds, whatever TRL sends
        trainer.data_collator = SequenceBoundsCollator(trainer.data_collator)
    trainer.use_model_loss = backend == "unsloth"
    trainer.fused_loss = backend == "hf" and resolve_fused_cross_entropy(cfg.fused_cross_entropy)
    # SFTTrainer casts a quantized model's LoRA weights to bf16 in __init__; the optimizer does not exist
    # yet, so casting back here gives float32 master weights for the whole run.
    recast = set_trainable_dtype(trainer.model, getattr(torch, cfg.adapter_dtype))
    if recast:
        log.info("train: %d LoRA tensors kept in %s (train.adapter_dtype)", recast, cfg.adapter_dtype)
    if backend == "hf" and (args.bf16 or args.fp16):
        skip_lora_input_casts(trainer.model)  # the Trainer's autocast casts them for the matmuls anyway
    return trainer


def _check_fingerprint(run_dir: Path, fingerprint: dict[str, str], resume: bool, force: bool) -> None:
    path = run_dir / TRAIN_FINGERPRINT
    out = run_dir / TRAIN_DIR
    if resume and path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in fingerprint if old.get(k) != fingerprint[k]]
        if changed and not force:
            raise ConfigError(
                f"cannot resume: the {', '.join(changed)} changed since the checkpoints in {out} were written "
                "(resuming would mix two different runs). Start a new run directory, or pass --force to resume anyway"
            )
        if changed:
            log.warning("resuming although the %s changed (--force)", ", ".join(changed))
    write_json_atomic(path, fingerprint)


def _check_planned_rows(run_dir: Path, cfg: TrainConfig, resume: bool, force: bool) -> None:
    """packed_length=auto is planned from the GPU's memory: a resume on another card could plan other rows,
    and the checkpoints' step count would then point at other batches."""
    path = run_dir / TRAIN_PLANNED_ROWS
    out = run_dir / TRAIN_DIR
    planned = {"packed_length": cfg.packed_length, "gradient_accumulation_steps": cfg.gradient_accumulation_steps}
    if resume and path.is_file():
        old = json.loads(path.read_text())
        if old != planned and not force:
            raise ConfigError(
                f"cannot resume: the checkpoints in {out} were trained in packed rows of {old['packed_length']} tokens "
                f"x gradient accumulation {old['gradient_accumulation_steps']}, and this GPU's memory plan gives "
                f"{planned['packed_length']} x {planned['gradient_accumulation_steps']} (train.packed_length=auto). "
                "Resume on a GPU like the first one, or pass --force to resume anyway"
            )
    write_json_atomic(path, planned)


def _loss_outputs(run_dir: Path) -> None:
    """loss_curve.png (every logged loss) and loss_table.md (step, training loss, validation loss) like the
    report's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = run_dir / TRAIN_METRICS
    metrics = list(read_jsonl(metrics_path)) if metrics_path.is_file() else []
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss", marker=".", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), label="validation loss", marker="o", linewidth=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("papertune: training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / TRAIN_LOSS_CURVE, dpi=110)
    plt.close(fig)
    write_text_atomic(run_dir / TRAIN_LOSS_TABLE, render_loss_table(loss_table(metrics_path)) + "\n")


def _pipeline_run_options(config: PapertuneConfig, same_run: bool) -> dict[str, Any]:
    """papertune run resumes from RUN/train's checkpoints only when they come from a run of this stage's
    fingerprint that was not forced (same_run: a stricter test than train's own, which allows RESUME_SAFE
    settings to change) and train's own record, RUN/train/fingerprint.json, says they survived (a run that
    failed before train cleared them leaves a record of the new fingerprint beside old checkpoints); else it
    starts over and deletes them."""
    from papertune.train.data import run_fingerprint
    from papertune.train.model import choose_backend
    from papertune.train.trainer import complete_checkpoints

    run_dir = Path(config.run_dir)
    checkpoints = complete_checkpoints(run_dir / TRAIN_CHECKPOINTS)
    if not checkpoints:
        return {"force": True}
    try:
        recorded = json.loads((run_dir / TRAIN_FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if same_run and recorded == run_fingerprint(config.train, run_dir, choose_backend(config.train)):
        log.info("run: train resumes from %s (written with the same settings and data)", checkpoints[-1].name)
        return {"resume": True}
    log.info("run: train starts over; the %d checkpoint(s) in %s are from %s and are deleted", len(checkpoints),
             run_dir / TRAIN_CHECKPOINTS, "other settings or data" if same_run else "another run or a forced rerun")
    return {"force": True}


def _backend(config: PapertuneConfig) -> dict[str, Any]:
    # "auto" resolves per machine; checkpoints of one backend are not resumed by another.
    from papertune.train.model import choose_backend

    return {"backend": choose_backend(config.train)}


SPEC = StageSpec(
    name="train",
    directory=TRAIN_DIR,
    help="LoRA/QLoRA fine-tuning on RUN/dataset (RUN/train/adapter)",
    description="Fine-tune train.model on RUN/dataset with TRL's SFTTrainer (Unsloth or transformers+PEFT). Exit "
    "code 4: the loss became NaN/inf; 5: stopped by SIGTERM after a checkpoint (rerun with --resume). Multi-GPU: "
    "accelerate launch -m papertune train ... (or torchrun --nproc_per_node N -m papertune train ...).",
    settings=("train",),
    outputs=(TRAIN_ADAPTER, TRAIN_REPORT, TRAIN_METRICS, TRAIN_BEST_CHECKPOINT, TRAIN_LOSS_TABLE, TRAIN_LOSS_CURVE),
    inputs=run_files(DATASET),
    options=(
        CommandOption(("--resume",), "continue from the last complete checkpoint", switch=True),
        CommandOption(("--force",), "with --resume: resume even if config/data/model changed; without: discard "
                      "old checkpoints", switch=True),
    ),
    run_options=_pipeline_run_options,
    environment=_backend,
)


def run(config: PapertuneConfig, *, resume: bool = False, force: bool = False) -> Path:
    """Fine-tune ``train.model`` on ``RUN/dataset``; returns the adapter folder ``RUN/train/adapter``."""
    cfg = config.train
    run_dir = Path(config.run_dir)
    out = run_dir / TRAIN_DIR
    from papertune.train.model import choose_backend

    backend = choose_backend(cfg)
    if backend == "unsloth":
        import unsloth  # noqa: F401  (Unsloth patches transformers and TRL; it must come first)

    import torch
    from transformers import EarlyStoppingCallback

    from papertune.train.data import load_training_data, run_fingerprint
    from papertune.train.model import load_planned, load_tokenizer
    from papertune.train.trainer import MetricsCallback, PreemptionCallback, complete_checkpoints

    if not (run_dir / DATASET / "dataset_dict.json").is_file():
        raise InputError(f"no dataset in {run_dir / DATASET}: run `papertune build --run-dir {run_dir}` first")
    checkpoints_dir = run_dir / TRAIN_CHECKPOINTS
    existing = complete_checkpoints(checkpoints_dir)
    if existing and not resume and not force:
        raise ConfigError(
            f"{out} already holds checkpoints ({existing[-1].name}); pass --resume to continue that run, or use "
            "another run directory (--force starts over and deletes them)"
        )
    if force and not resume and out.exists():
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
        (run_dir / TRAIN_METRICS).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(cfg, run_dir, backend)
    _check_fingerprint(run_dir, fingerprint, resume, force)
    built_for = _built_model(run_dir)
    if built_for and built_for != cfg.model:
        log.warning("the dataset was formatted for %s (build.model) but train.model is %s: its chat template may "
                    "differ; set both to the same model", built_for, cfg.model)
    record_stage(run_dir, TRAIN_DIR, config)

    log.info("train: %s with the %s backend (%s)", cfg.model, backend,
             torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
    from transformers import set_seed

    set_seed(cfg.seed)  # the LoRA initialisation too: two runs of one config start from the same weights
    if backend == "hf":
        # The data first: packed_length=auto plans the rows from the examples' mean length.
        tokenizer = load_tokenizer(cfg)
        data, counts = load_training_data(run_dir, tokenizer, cfg.max_seq_length)
        mean_tokens = counts["train_tokens"] / counts["train_examples"]
        model, tokenizer, cfg = load_planned(cfg, backend, tokenizer, mean_example_tokens=mean_tokens)
        _check_planned_rows(run_dir, cfg, resume, force)
    else:
        model, tokenizer, cfg = load_planned(cfg, backend)
        data, counts = load_training_data(run_dir, tokenizer, cfg.max_seq_length)
    if counts["train_over_max_seq_length"] or counts["test_over_max_seq_length"]:
        log.warning("train: %d/%d examples longer than train.max_seq_length=%d were left out",
                    counts["train_over_max_seq_length"], counts["test_over_max_seq_length"], cfg.max_seq_length)
    has_cuda = torch.cuda.is_available()
    bf16 = has_cuda and torch.cuda.is_bf16_supported()
    args = sft_config(cfg, checkpoints_dir, has_cuda, bf16)

    metrics_cb = MetricsCallback(out)
    preemption = PreemptionCallback()
    callbacks: list[Any] = [metrics_cb, preemption]
    if cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold))
    trainer = build_trainer(cfg, backend, model, tokenizer, data["train"], data["test"], args, callbacks)
    metrics_cb.trainer = trainer
    resume_from = None
    if resume:
        done = complete_checkpoints(checkpoints_dir)
        if done:
            resume_from = str(done[-1])
            log.info("train: resuming from %s", resume_from)
        else:
            log.info("train: --resume given but no complete checkpoint in %s; starting from the beginning", checkpoints_dir)
    if has_cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        preemption.restore()
    wall = time.time() - started
    if preemption.requested:
        # No advice here: `papertune train` says to rerun with --resume, `papertune run` to rerun the same command.
        raise PreemptedError(f"training stopped on SIGTERM after saving {complete_checkpoints(checkpoints_dir)[-1]}")

    adapter_dir = run_dir / TRAIN_ADAPTER
    if trainer.is_world_process_zero():
        with atomic_dir(adapter_dir) as tmp:
            trainer.model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        best = trainer.state.best_model_checkpoint
        write_json_atomic(run_dir / TRAIN_BEST_CHECKPOINT, {
            "checkpoint": best, "eval_loss": trainer.state.best_metric, "step": trainer.state.best_global_step,
            "note": "the adapter in train/adapter is this checkpoint's (load_best_model_at_end)",
        })
        _loss_outputs(run_dir)
        tokens = trainer.state.num_input_tokens_seen
        report = {
            "model": cfg.model,
            "backend": backend,
            "device": torch.cuda.get_device_name() if has_cuda else "cpu",
            "resumed_from": resume_from,
            "global_steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_loss": result.training_loss,
            "best_eval_loss": trainer.state.best_metric,
            "best_checkpoint": best,
            "stopped_early": trainer.state.global_step < trainer.state.max_steps,
            "wall_s": round(wall, 1),
            "tokens_seen": tokens,
            "tokens_per_s": round(tokens / wall, 1) if wall else None,
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if has_cuda else None,
            "packed_length": cfg.packed_length if cfg.packing else None,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            **counts,
        }
        write_json_atomic(run_dir / TRAIN_REPORT, report)
        if cfg.merge_16bit:
            merge_adapter(cfg, adapter_dir, run_dir / TRAIN_MERGED)
        log.info("train: %d steps in %.0f s (%.0f tokens/s), best validation loss %.4f -> %s",
                 trainer.state.global_step, wall, report["tokens_per_s"] or 0, trainer.state.best_metric or float("nan"),
                 adapter_dir)
    trainer.accelerator.wait_for_everyone()
    return adapter_dir


def _built_model(run_dir: Path) -> str | None:
    path = run_dir / BUILD_REPORT
    return json.loads(path.read_text()).get("model") if path.is_file() else None


def merge_adapter(cfg: TrainConfig, adapter_dir: Path, dest: Path) -> Path:
    """The adapter merged into a 16-bit (bf16 on GPU, fp32 on CPU) copy of the base model, as safetensors."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from papertune.models import resolve_model

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model, "train.model"), dtype=dtype,
                                                use_safetensors=True, trust_remote_code=cfg.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_dir(dest) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
    return dest


