"""Stage: supervised fine-tuning with LoRA/QLoRA through TRL's SFTTrainer (Unsloth or transformers+PEFT)."""

from papertune.train.stage import TRAIN_DIR, merge_adapter, run

__all__ = ["TRAIN_DIR", "merge_adapter", "run"]
