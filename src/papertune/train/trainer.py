"""TRL's SFTTrainer with the guarantees a long fine-tuning run needs.

- Checkpoints are written to a staging folder and renamed into place, then marked complete; a resume
  only ever picks a complete checkpoint.
- A NaN or infinite loss stops the run, and nothing trained after it is saved: on the CPU at that
  micro-batch; on a GPU as soon as the GPU has computed it (usually one micro-batch later: asking at once
  would make the CPU wait for the GPU every micro-batch), and always before the next checkpoint, log line
  or the end of training. So the last checkpoint stays good.
- Neither that check nor the count of tokens seen makes the CPU wait for the GPU between micro-batches
  (transformers' own count does, with a collective across ranks): the CPU stays ahead of the GPU.
- SIGTERM (preemption) saves a checkpoint at the end of the current step and stops.
- Every log and evaluation goes to ``metrics.jsonl`` and TensorBoard; the progress bar shows loss,
  learning rate, tokens/s and time left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from papertune.errors import NonFiniteLossError
from papertune.rundir import replace_dir

log = logging.getLogger(__name__)

COMPLETE_MARKER = "papertune_complete.json"
CHECKPOINT_PREFIX = "checkpoint-"
# Fault injection for the reliability tests: kill the process after the checkpoint of this step is
# written, or make the loss of this step NaN.
FAULT_KILL_AFTER_SAVE = "PAPERTUNE_FAULT_KILL_AFTER_SAVE_STEP"
FAULT_NAN_AT_STEP = "PAPERTUNE_FAULT_NAN_AT_STEP"
# Diagnostics: append a hash of every training micro-batch to this file (to check the sample order).
RECORD_BATCHES = "PAPERTUNE_RECORD_BATCHES"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints that were fully written, oldest first."""
    found = []
    for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if suffix.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def set_trainable_dtype(model: Any, dtype: Any) -> int:
    """Cast the trainable parameters (the LoRA weights) to ``dtype``; returns how many were changed."""
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


class NonFiniteLossWatch:
    """Which micro-batch's loss, if any, was NaN or infinite, found without making the CPU wait for the GPU.

    On a GPU each loss is copied to pinned host memory without blocking, behind an event; ``poll`` reads the
    copies whose event has passed, ``drain`` waits for all of them. On the CPU the loss is checked at once."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Any, Any]] = []  # (optimizer step, host copy of the loss, CUDA event)

    def record(self, loss: Any, step: int) -> None:
        loss = loss.detach()
        if loss.device.type != "cuda":
            self._check(step, loss.float().reshape(-1))
            return
        host = torch.empty(loss.numel(), dtype=torch.float32, pin_memory=True)
        host.copy_(loss.float().reshape(-1), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((step, host, event))
        self.poll()

    def poll(self) -> None:
        while self.pending and self.pending[0][2].query():
            step, host, _ = self.pending.pop(0)
            self._check(step, host)

    def drain(self) -> None:
        while self.pending:
            step, host, event = self.pending.pop(0)
            event.synchronize()
            self._check(step, host)

    @staticmethod
    def _check(step: int, values: Any) -> None:
        bad = [v for v in values.tolist() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"the training loss became {bad[0]} at step {step}; stopped before anything trained since was saved, "
                "so the last checkpoint is intact. Lower train.learning_rate, check the data, or use train.dtype=float32"
            )


class PapertuneSFTTrainer(SFTTrainer):
    # True for Unsloth: the model's own loss (Unsloth's fused cross-entropy) instead of TRL's fused-head
    # path, which bypasses Unsloth's kernels and measured about 1.7x slower per step on the seed shape.
    use_model_loss: bool = False

    # True: the loss through Liger's fused linear cross-entropy (train.fused_cross_entropy; no full logits).
    fused_loss: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loss_watch = NonFiniteLossWatch()
        self.tokens_on_device: Any = None  # tokens seen since the count was last read back (a tensor)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        if self.fused_loss:
            from papertune.train.fast import fused_causal_lm_loss

            loss = fused_causal_lm_loss(model, dict(inputs), num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # As transformers' own loss: num_items_in_batch counts the labelled tokens of every rank, and
                # DDP averages the gradients over the ranks.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss
        if self.use_model_loss:
            from transformers import Trainer

            inputs["use_cache"] = False
            mask = inputs.get("attention_mask")
            if mask is not None and bool(mask.all()):
                # No padding in this batch: without a mask the fused causal attention kernels can run.
                del inputs["attention_mask"]
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        record = os.environ.get(RECORD_BATCHES)
        if record and self.is_world_process_zero():
            ids = inputs["input_ids"].detach().cpu().numpy().tobytes()
            with open(record, "a", encoding="utf-8") as fh:
                fh.write(f"{self.state.global_step + 1} {hashlib.sha256(ids).hexdigest()[:16]}\n")
        loss = super().training_step(model, inputs, num_items_in_batch)
        step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
        if os.environ.get(FAULT_NAN_AT_STEP) == str(step):
            loss = loss * float("nan")
        self.loss_watch.record(loss, step)
        return loss

    def _track_num_input_tokens(self, inputs: Any) -> None:
        """The tokens of this micro-batch, counted as transformers counts them but added up on the device;
        ``_read_back`` brings the sum over all ranks to ``state.num_input_tokens_seen`` when it is read."""
        mode = self.args.include_num_input_tokens_seen
        ids = inputs.get("input_ids") if mode in ("all", "non_padding") else None
        if ids is None:
            return super()._track_num_input_tokens(inputs)
        pad = getattr(self.processing_class, "pad_token_id", None)
        if mode == "all":
            count = ids.new_tensor(ids.numel())
        elif "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        elif pad is not None:
            count = (ids != pad).sum()
        else:
            count = ids.new_tensor(ids.numel())
        count = count.to(torch.int64)
        self.tokens_on_device = count if self.tokens_on_device is None else self.tokens_on_device + count

    def _read_back(self) -> None:
        """Wait for the GPU: raise on a non-finite loss so far, and add the tokens counted on the device to
        ``state.num_input_tokens_seen`` (summed over the ranks: every rank calls this at the same points)."""
        self.loss_watch.drain()
        if self.tokens_on_device is not None:
            counted, self.tokens_on_device = self.tokens_on_device, None
            self.state.num_input_tokens_seen += int(self.accelerator.gather(counted.reshape(1)).sum().item())

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        self._read_back()  # every rank logs (transformers gathers the loss here too)
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        result = super().train(*args, **kwargs)
        self._read_back()  # the last micro-batches: nothing is saved before this returns
        return result

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self._read_back()  # never a checkpoint of weights a non-finite loss has touched
        real_output = self.args.output_dir
        final = Path(real_output) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        staging_root = Path(real_output) / ".staging"
        # Let the Trainer write everything into a staging folder, then rename it into place.
        self.args.output_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = real_output
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = staging_root / final.name
            if self.state.best_model_checkpoint and str(staging_root) in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(str(staging_root), real_output)
            # The state saved with the checkpoint names the best one by its staging path; a resume would then
            # not find it and forget which checkpoint was best.
            state_file = staged / "trainer_state.json"
            if state_file.is_file():
                saved = json.loads(state_file.read_text())
                if saved.get("best_model_checkpoint"):
                    saved["best_model_checkpoint"] = saved["best_model_checkpoint"].replace(str(staging_root), real_output)
                    state_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
            (staged / COMPLETE_MARKER).write_text(
                json.dumps({"global_step": self.state.global_step, "saved_at": time.time()}) + "\n"
            )
            replace_dir(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            self._keep_newest_checkpoints(Path(real_output))
        self.accelerator.wait_for_everyone()
        if os.environ.get(FAULT_KILL_AFTER_SAVE) == str(self.state.global_step):
            os.kill(os.getpid(), signal.SIGKILL)


    def _keep_newest_checkpoints(self, output_dir: Path) -> None:
        """Delete all but the newest save_total_limit complete checkpoints; the best one always stays."""
        limit = self.args.save_total_limit
        if not limit:
            return
        best = Path(self.state.best_model_checkpoint).name if self.state.best_model_checkpoint else None
        done = complete_checkpoints(output_dir)
        keep = {p.name for p in done[-limit:]} | ({best} if best else set())
        for path in done:
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)


class PreemptionCallback(TrainerCallback):
    """On SIGTERM: finish the current step, save a checkpoint, stop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")
        self.requested = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class MetricsCallback(TrainerCallback):
    """Logs and evaluations to metrics.jsonl and TensorBoard; tokens/s and ETA on the progress bar."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.tb_dir = out_dir / "tensorboard"
        self.writer = None
        self.trainer: Any = None  # set after the trainer is built, to reach its progress bar
        self.started = time.time()
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.time()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen
        if state.is_world_process_zero:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.tb_dir))
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                log.warning("tensorboard is not installed; metrics go to %s only", self.path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        elapsed = max(time.time() - self.started, 1e-9)
        tokens = state.num_input_tokens_seen - self.start_tokens
        steps_done = state.global_step - self.start_step
        record = {"step": state.global_step, "epoch": state.epoch, "time_s": round(elapsed, 2),
                  "tokens_seen": state.num_input_tokens_seen, **logs}
        if tokens:
            record["tokens_per_s"] = round(tokens / elapsed, 1)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in logs.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key if "/" in key else f"train/{key}" if not key.startswith("eval_")
                                           else f"eval/{key[5:]}", value, state.global_step)
            self.writer.flush()
        bar = self._progress_bar()
        if bar is not None and "loss" in logs:
            remaining = (state.max_steps - state.global_step) * elapsed / max(steps_done, 1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                            tok_s=f"{record.get('tokens_per_s', 0):.0f}", eta=f"{remaining / 60:.1f}m")

    def _progress_bar(self) -> Any:
        callbacks = self.trainer.callback_handler.callbacks if self.trainer is not None else []
        for callback in callbacks:
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                return bar
        return None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.writer is not None:
            self.writer.close()
