"""Training: exact loss masks, and the reliability guarantees, on tiny models on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, built_run, qa_rows, tiny_overrides, write_rows
from papertune import build, train
from papertune.chat import render_example, render_prompt
from papertune.config import SMOLLM2_PACKAGED, load_config
from papertune.errors import ConfigError, NonFiniteLossError
from papertune.models import QWEN2_5_TOKENIZER, resolve_model
from papertune.train.data import tokenize_example
from papertune.train.model import fix_pad_token
from papertune.train.trainer import COMPLETE_MARKER, NonFiniteLossWatch, complete_checkpoints


def _tokenizer(spec: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec))
    fix_pad_token(tokenizer)
    return tokenizer


def _labels(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """input_ids and labels exactly as the trainer's collator makes them."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    example = tokenize_example(tokenizer, prompt, completion)
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    batch = collator([example])
    return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()


# --- golden tests: which tokens carry loss ---------------------------------------------------------


def test_golden_loss_mask_qwen2_5():
    tokenizer = _tokenizer(QWEN2_5_TOKENIZER)
    ex = render_example(tokenizer, "What is LoRA?", "A low-rank adapter.", "Be brief.")
    ids, labels = _labels(tokenizer, ex["prompt"], ex["completion"])
    # <|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is LoRA?<|im_end|>\n<|im_start|>assistant\n
    assert ids == [151644, 8948, 198, 3430, 9814, 13, 151645, 198, 151644, 872, 198, 3838, 374, 6485, 5609, 30,
                   151645, 198, 151644, 77091, 198,
                   # A, " low", "-r", "ank", " adapter", ".", <|im_end|>
                   32, 3347, 3795, 1180, 12956, 13, 151645]
    assert labels == [-100] * 21 + [32, 3347, 3795, 1180, 12956, 13, 151645]
    assert tokenizer.decode([t for t in labels if t != -100]) == "A low-rank adapter.<|im_end|>"
    assert tokenizer.pad_token_id == 151643 != tokenizer.eos_token_id == 151645


def test_golden_loss_mask_smollm2():
    tokenizer = _tokenizer(SMOLLM2_PACKAGED)
    ex = render_example(tokenizer, "What is LoRA?", "A low-rank adapter.", "Be brief.")
    ids, labels = _labels(tokenizer, ex["prompt"], ex["completion"])
    assert ids == [1, 9690, 198, 6077, 5453, 30, 2, 198, 1, 4093, 198, 1780, 314, 14210, 7055, 47, 2, 198, 1, 520,
                   9531, 198, 49, 1642, 29, 12797, 33303, 30, 2]
    assert labels == [-100] * 22 + [49, 1642, 29, 12797, 33303, 30, 2]
    assert tokenizer.decode([t for t in labels if t != -100]) == "A low-rank adapter.<|im_end|>"
    # SmolLM2 ships with pad == eos; training uses <|endoftext|> instead, so EOS stays a learned target.
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("spec", [QWEN2_5_TOKENIZER, SMOLLM2_PACKAGED])
def test_training_prompt_is_byte_identical_to_inference_prompt(spec):
    tokenizer = _tokenizer(spec)
    ex = render_example(tokenizer, "Why quantize?", "To save memory.", "Sys.")
    prompt = render_prompt(tokenizer, "Why quantize?", "Sys.")
    assert ex["prompt"] == prompt
    train_ids = tokenize_example(tokenizer, ex["prompt"], ex["completion"])["input_ids"]
    inference_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert train_ids[: len(inference_ids)] == inference_ids


def test_pad_token_without_a_distinct_candidate_is_an_error():
    class Tok:
        pad_token, pad_token_id, eos_token, eos_token_id = "</s>", 2, "</s>", 2

        def get_vocab(self):
            return {"</s>": 2, "a": 3}

    with pytest.raises(ConfigError, match="no pad token distinct from its EOS token"):
        fix_pad_token(Tok())


# --- a tiny real training run ----------------------------------------------------------------------


def test_train_writes_adapter_metrics_plot_and_table(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = built_run(tmp_path, tiny_model)
    adapter = train.run(load_config(None, tiny_overrides(run, tiny_model)))
    out = run / "train"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "chat_template.jinja").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics) and any("eval_loss" in m for m in metrics)
    assert all(m["tokens_per_s"] > 0 for m in metrics if "loss" in m and m["step"] > 1)
    table = (out / "loss_table.md").read_text().splitlines()
    assert table[0] == "| Step | Training Loss | Validation Loss |" and len(table) >= 4
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert any((out / "tensorboard").iterdir())
    best = json.loads((out / "best_checkpoint.json").read_text())
    assert best["eval_loss"] == min(m["eval_loss"] for m in metrics if "eval_loss" in m)
    # Every checkpoint is complete; the adapter loads with PEFT over the base model.
    assert all((c / COMPLETE_MARKER).is_file() for c in complete_checkpoints(out / "checkpoints"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, adapter)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == base.config.vocab_size
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "hf" and report["global_steps"] > 0


def test_existing_checkpoints_need_resume_or_force(tmp_path, tiny_model):
    run = built_run(tmp_path, tiny_model)
    cfg = load_config(None, tiny_overrides(run, tiny_model, max_steps=2))
    train.run(cfg)
    with pytest.raises(ConfigError, match="pass --resume"):
        train.run(cfg)
    changed = load_config(None, tiny_overrides(run, tiny_model, max_steps=2, learning_rate=5e-4))
    with pytest.raises(ConfigError, match="cannot resume: the config changed"):
        train.run(changed, resume=True)
    train.run(changed, resume=True, force=True)  # explicit override


def test_half_written_checkpoints_are_never_picked(tmp_path):
    out = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        path = out / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if complete:
            (path / COMPLETE_MARKER).write_text("{}")
    (out / ".staging" / "checkpoint-8").mkdir(parents=True)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


def test_nan_loss_stops_within_one_step_and_keeps_last_checkpoint(tmp_path, tiny_model, monkeypatch):
    run = built_run(tmp_path, tiny_model)
    monkeypatch.setenv("PAPERTUNE_FAULT_NAN_AT_STEP", "3")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 3"):
        train.run(load_config(None, tiny_overrides(run, tiny_model)))
    done = complete_checkpoints(run / "train" / "checkpoints")
    assert [p.name for p in done] == ["checkpoint-2"]
    steps = [json.loads(line)["step"] for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2


def test_nonfinite_loss_watch_reads_gpu_copies_only_once_they_have_arrived():
    """On a GPU the loss check must not make the CPU wait for every micro-batch: it reads a loss's host copy
    once the copy's event has passed, and waits only when asked to (before a checkpoint, log or the end)."""

    class Event:  # stands in for torch.cuda.Event
        def __init__(self):
            self.done, self.waited = False, False

        def query(self):
            return self.done

        def synchronize(self):
            self.waited = self.done = True

    watch = NonFiniteLossWatch()
    first, second = Event(), Event()
    watch.pending = [(1, torch.tensor([2.5]), first), (2, torch.tensor([float("nan")]), second)]
    watch.poll()
    assert len(watch.pending) == 2  # neither copy has arrived: nothing read, no wait
    first.done = True
    watch.poll()
    assert [step for step, _, _ in watch.pending] == [2]
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 2"):
        watch.drain()
    assert second.waited and not watch.pending
    with pytest.raises(NonFiniteLossError, match="loss became inf at step 7"):  # on the CPU: at once
        NonFiniteLossWatch().record(torch.tensor(float("inf")), 7)
    NonFiniteLossWatch().record(torch.tensor(1.0), 8)


def test_weights_only_from_safetensors(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A checkpoint in the pickle format (transformers 5 no longer writes it, so write it by hand).
    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(pickled)
    assert not list(pickled.glob("*.safetensors"))
    run = built_run(tmp_path, tiny_model)
    with pytest.raises(ConfigError, match="could not be loaded"):
        train.run(load_config(None, tiny_overrides(run, pickled)))
    assert load_config().train.trust_remote_code is False


def test_early_stopping_stops_and_marks_best(tmp_path, tiny_model):
    run = built_run(tmp_path, tiny_model)
    # A threshold no evaluation can beat: every evaluation after the first counts as no improvement.
    train.run(load_config(None, tiny_overrides(run, tiny_model, num_train_epochs=10, early_stopping_patience=2,
                                               early_stopping_threshold=100)))
    report = json.loads((run / "train" / "report.json").read_text())
    assert report["stopped_early"] and report["global_steps"] == 6  # evals at 2, 4, 6: two without improvement
    evals = {json.loads(line)["step"]: json.loads(line)["eval_loss"]
             for line in (run / "train" / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line}
    best_step = min(evals, key=evals.get)
    assert report["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert (run / "train" / "checkpoints" / f"checkpoint-{best_step}" / COMPLETE_MARKER).is_file()


# --- kill, preempt, resume (separate processes) ----------------------------------------------------


def _papertune(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "papertune", *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _train_cli(run: Path, model: Path, *extra: str, **settings) -> list[str]:
    sets = [x for o in tiny_overrides(run, model, **settings) for x in ("--set", o)]
    return ["train", "-q", *sets, *extra]


def _adapter_state(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_model):
    common = dict(num_train_epochs=2, early_stopping_patience=0)
    straight = built_run(tmp_path, tiny_model, "straight")
    killed = built_run(tmp_path, tiny_model, "killed")
    order_a, order_b = tmp_path / "order_a.txt", tmp_path / "order_b.txt"

    proc = _papertune(_train_cli(straight, tiny_model, **common), {"PAPERTUNE_RECORD_BATCHES": str(order_a)})
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    env = {"PAPERTUNE_RECORD_BATCHES": str(order_b), "PAPERTUNE_FAULT_KILL_AFTER_SAVE_STEP": "4"}
    proc = _papertune(_train_cli(killed, tiny_model, **common), env)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert [p.name for p in complete_checkpoints(killed / "train" / "checkpoints")][-1] == "checkpoint-4"
    proc = _papertune(_train_cli(killed, tiny_model, "--resume", **common), {"PAPERTUNE_RECORD_BATCHES": str(order_b)})
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    # Same micro-batches in the same order (gradient accumulation 2), and the same final weights.
    assert order_a.read_text() == order_b.read_text()
    assert len(order_a.read_text().splitlines()) > 8
    a, b = _adapter_state(straight / "train" / "adapter"), _adapter_state(killed / "train" / "adapter")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    assert json.loads((killed / "train" / "report.json").read_text())["resumed_from"].endswith("checkpoint-4")
    # The resumed run still knows the best checkpoint, by its final (not its staging) path.
    for checkpoint in complete_checkpoints(killed / "train" / "checkpoints"):
        best = json.loads((checkpoint / "trainer_state.json").read_text())["best_model_checkpoint"]
        assert best and ".staging" not in best and Path(best).name.startswith("checkpoint-"), best
    best_a = json.loads((straight / "train" / "best_checkpoint.json").read_text())
    best_b = json.loads((killed / "train" / "best_checkpoint.json").read_text())
    assert best_b["checkpoint"] and Path(best_a["checkpoint"]).name == Path(best_b["checkpoint"]).name


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path, tiny_model):
    run = built_run(tmp_path, tiny_model)
    settings = dict(max_steps=40, eval_steps=1000, early_stopping_patience=0, gradient_accumulation_steps=1)
    proc = _papertune(_train_cli(run, tiny_model, **settings))
    metrics = run / "train" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 5, output
    assert "rerun with --resume" in output
    saved = complete_checkpoints(run / "train" / "checkpoints")
    assert len(saved) == 1 and 0 < int(saved[0].name.split("-")[1]) < 40
    proc = _papertune(_train_cli(run, tiny_model, "--resume", **settings))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    report = json.loads((run / "train" / "report.json").read_text())
    assert report["global_steps"] == 40 and report["resumed_from"].endswith(saved[0].name)


@pytest.mark.slow
def test_cli_exit_code_for_nan(tmp_path, tiny_model):
    run = built_run(tmp_path, tiny_model)
    proc = _papertune(_train_cli(run, tiny_model), {"PAPERTUNE_FAULT_NAN_AT_STEP": "1"})
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 4, output
    assert "the training loss became nan at step 1" in output


@pytest.mark.slow
def test_cpu_profile_fine_tunes_smollm2(tmp_path):
    """The real 135M model trains a few steps on the CPU and its validation loss goes down."""
    run = tmp_path / "run"
    write_rows(run, qa_rows(n_chunks=5))
    overrides = [f"run_dir={run}", f"build.model={SMOLLM2_PACKAGED}", "build.num_proc=1",
                 f"train.model={SMOLLM2_PACKAGED}"]
    cfg = load_config(REPO / "configs" / "cpu.yaml", overrides + ["train.max_steps=4", "train.eval_strategy=steps",
                                                                   "train.eval_steps=2", "train.learning_rate=5e-4"])
    build.run(cfg)
    train.run(cfg)
    evals = [json.loads(line)["eval_loss"] for line in (run / "train" / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in line]
    assert len(evals) == 2 and evals[-1] < evals[0]


def test_merged_16bit_model_matches_base_plus_adapter(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = built_run(tmp_path, tiny_model)
    adapter = train.run(load_config(None, tiny_overrides(run, tiny_model, max_steps=2, merge_16bit="true")))
    merged_dir = run / "train" / "merged"
    assert list(merged_dir.glob("*.safetensors")) and (merged_dir / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_lora_weights_are_trained_in_float32_by_default(tmp_path, tiny_model):
    """TRL casts QLoRA adapters to bf16; papertune keeps float32 master weights (train.adapter_dtype)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from papertune.train.trainer import set_trainable_dtype

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    set_trainable_dtype(model, torch.bfloat16)  # what SFTTrainer does to a quantized model's adapters
    assert set_trainable_dtype(model, torch.float32) == 8  # 2 layers x 2 modules x (A, B)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert load_config().train.adapter_dtype == "float32"
    # The precision this protects: an update of lr-size on a typical LoRA weight vanishes in bf16.
    weight = torch.tensor(0.05)
    assert (weight.bfloat16() + 2e-5).item() == weight.bfloat16().item()
    assert (weight + 2e-5).item() != weight.item()


# --- packing (train.packing): the same loss per token as padded batches ------------------------------


def test_padding_free_packing_gives_the_same_per_token_loss_as_padding(tiny_model):
    """Three examples of different lengths: padded into a batch, and packed end to end in one row by TRL's
    padding-free collator. Every labelled token must get the same loss, so packed examples see nothing of
    each other (transformers builds the block-diagonal mask from the restarting positions)."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = _tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    examples = [tokenize_example(tokenizer, render_prompt(tokenizer, q, None), a + "<|im_end|>")
                for q, a in [("What is LoRA?", "Low-rank adapters added to frozen weights."),
                             ("Define QLoRA.", "LoRA over a 4-bit quantized base model, with paged optimizers."),
                             ("Why pack?", "No compute on padding.")]]

    def token_losses(batch) -> list[float]:
        with torch.no_grad():
            # use_cache=False as in training: with a KV cache transformers does not look for packed positions.
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                                   reduction="none", ignore_index=-100)
        return losses[labels.flatten() != -100].tolist()

    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    by_padding, by_packing = token_losses(padded), token_losses(packed)
    assert len(by_padding) == len(by_packing) == sum(sum(1 for t in e["labels"] if t != -100) for e in examples)
    assert torch.allclose(torch.tensor(by_padding), torch.tensor(by_packing), atol=1e-5)
    # Without the restarting positions the examples would see each other, and the losses would differ.
    leaked = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    assert (torch.tensor(by_padding) - torch.tensor(token_losses(leaked))).abs().max() > 5e-3


def test_sequence_bounds_match_trl_and_reach_every_packed_batch(tmp_path, tiny_model):
    """The varlen attention needs each packed row's sequence bounds. TRL >= 1.16's collator sends them
    (golden: ours must be the same values); older TRL sends only position_ids, and then build_trainer's
    SequenceBoundsCollator adds them, else every row would pay for full quadratic attention on the GPU."""
    from datasets import Dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from papertune.config import TrainConfig
    from papertune.train.fast import SequenceBoundsCollator, add_sequence_bounds
    from papertune.train.model import load_for_training
    from papertune.train.stage import sft_config, build_trainer

    bound_keys = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (7, 3, 11)]
    trl_batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=32)(examples)
    old_trl_batch = {k: v for k, v in trl_batch.items() if k not in bound_keys}  # what TRL < 1.16 sends
    ours = add_sequence_bounds(dict(old_trl_batch))
    # 3 examples, then 11 padding tokens (position 0 each: sequences of one token, as TRL counts them).
    assert ours["cu_seq_lens_q"].tolist() == [0, 7, 10, 21] + list(range(22, 33))
    assert ours["cu_seq_lens_q"].dtype == torch.int32 and ours["max_length_q"] == ours["max_length_k"] == 11
    if "cu_seq_lens_q" in trl_batch:  # TRL >= 1.16
        for key in bound_keys:
            assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(trl_batch[key])), key
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)  # not packed: left as it is
    assert add_sequence_bounds(dict(padded)).keys() == padded.keys()

    def old_trl(inner):  # a collator as TRL < 1.16 behaves
        return lambda features: {k: v for k, v in inner(features).items() if k not in bound_keys}

    tokenizer = _tokenizer(str(tiny_model))
    data = Dataset.from_list(examples)
    cfg = TrainConfig(model=str(tiny_model), backend="hf", load_in_4bit=False, packing=True, max_seq_length=64,
                      packed_length=64, per_device_train_batch_size=1)
    model = load_for_training(cfg, "hf")[0]
    trainer = build_trainer(cfg, "hf", model, tokenizer, data, data, sft_config(cfg, tmp_path, False, True))
    assert isinstance(trainer.data_collator, SequenceBoundsCollator)
    trainer.data_collator.inner = old_trl(trainer.data_collator.inner)
    batch = next(iter(trainer.get_train_dataloader()))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert batch["cu_seq_lens_q"].tolist() == starts + [batch["input_ids"].shape[1]]


def test_tokens_seen_are_counted_as_transformers_counts_them_but_read_back_only_when_logged(tmp_path, tiny_model):
    """transformers reads the token count back from the GPU every micro-batch (a wait, and a collective
    across ranks); papertune adds it up on the device and reads it when it is logged or saved. Golden:
    the same total as transformers' own count, which is every token but the packed rows' padding."""
    from datasets import Dataset
    from transformers import Trainer

    from papertune.config import TrainConfig
    from papertune.train.model import load_for_training
    from papertune.train.stage import sft_config, build_trainer

    lengths = (7, 3, 11, 20, 5)
    examples = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in lengths]
    data = Dataset.from_list(examples)
    cfg = TrainConfig(model=str(tiny_model), backend="hf", load_in_4bit=False, packing=True, max_seq_length=32,
                      packed_length=32, per_device_train_batch_size=1)
    model, tokenizer = load_for_training(cfg, "hf")
    trainer = build_trainer(cfg, "hf", model, tokenizer, data, data, sft_config(cfg, tmp_path, False, True))
    batches = list(trainer.get_train_dataloader())
    assert sum(b["input_ids"].numel() for b in batches) > sum(lengths)  # the rows are padded
    for batch in batches:
        Trainer._track_num_input_tokens(trainer, batch)
    expected, trainer.state.num_input_tokens_seen = trainer.state.num_input_tokens_seen, 0
    for batch in batches:
        trainer._track_num_input_tokens(batch)
    assert trainer.state.num_input_tokens_seen == 0  # not read back yet
    trainer.log({"loss": 1.0})
    assert trainer.state.num_input_tokens_seen == expected == sum(lengths)


def test_packed_training_runs_and_records_fewer_padding_tokens(tmp_path, tiny_model):
    run = built_run(tmp_path, tiny_model)
    train.run(load_config(None, tiny_overrides(run, tiny_model, packing="true", packed_length=1024, max_seq_length=512,
                                               per_device_train_batch_size=1, gradient_accumulation_steps=1)))
    report = json.loads((run / "train" / "report.json").read_text())
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(m["eval_loss"])) for m in metrics if "eval_loss" in m)
    # All training tokens fit in a couple of 1024-token rows: far fewer optimizer steps than unpacked.
    assert report["global_steps"] <= 6 and report["tokens_seen"] > 0
    assert report["tokens_seen"] == max(m["tokens_seen"] for m in metrics)  # the count read back at the end


def test_packed_rows_planned_from_the_data_hold_the_asked_examples_per_step(tmp_path, tiny_model):
    """packed_length=auto (gpu-fast): the rows are sized from the training split's mean length so that an
    optimizer step holds about packed_examples_per_step examples, as the report's batch 2 x 16 does."""
    from papertune.train.data import load_training_data
    from papertune.train.model import load_tokenizer

    run = built_run(tmp_path, tiny_model)
    config = load_config(None, tiny_overrides(run, tiny_model, packing="true", packed_length="auto",
                                              packed_examples_per_step=6, max_seq_length=512,
                                              per_device_train_batch_size=1, gradient_accumulation_steps=1))
    train.run(config)
    data, _ = load_training_data(run, load_tokenizer(config.train), 512)
    lengths = [len(ids) for ids in data["train"]["input_ids"]]
    expected = max(512, 1024 * -(-int(6 * sum(lengths) / len(lengths)) // 1024))  # no GPU: no memory limit
    report = json.loads((run / "train" / "report.json").read_text())
    assert (report["packed_length"], report["gradient_accumulation_steps"]) == (expected, 1)
    assert (report["train_tokens"], report["train_examples"]) == (sum(lengths), len(lengths))
    assert json.loads((run / "train" / "planned_rows.json").read_text()) == {
        "packed_length": expected, "gradient_accumulation_steps": 1}
    steps_per_epoch = report["global_steps"] / report["epochs"]
    assert steps_per_epoch < len(lengths) / 3  # a handful of examples per step, not one or two


def test_resume_refuses_rows_planned_differently(tmp_path):
    """A resume on a card with less memory could plan other rows for packed_length=auto; the checkpoints'
    step count would then point at other batches."""
    from papertune.config import TrainConfig
    from papertune.train.stage import _check_planned_rows

    first = TrainConfig(packing=True, packed_length=14336, per_device_train_batch_size=1, gradient_accumulation_steps=1)
    _check_planned_rows(tmp_path, first, resume=False, force=False)
    _check_planned_rows(tmp_path, first, resume=True, force=False)
    other = TrainConfig(packing=True, packed_length=7168, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match="rows of 14336 tokens x gradient accumulation 1.*gives 7168 x 2"):
        _check_planned_rows(tmp_path, other, resume=True, force=False)
    _check_planned_rows(tmp_path, other, resume=True, force=True)


def test_packing_settings_are_validated():
    with pytest.raises(ConfigError, match="train.packed_length"):
        load_config(None, ["train.packing=true", "train.packed_length=100", "train.max_seq_length=2048"])
    with pytest.raises(ConfigError, match="train.packing=true needs train.backend=hf"):
        load_config(None, ["train.packing=true", "train.backend=unsloth"])
    with pytest.raises(ConfigError, match="train.packed_length must be an integer or 'auto'; got 'long'"):
        load_config(None, ["train.packing=true", "train.packed_length=long"])
    with pytest.raises(ConfigError, match="train.packed_length=auto needs train.packing=true"):
        load_config(None, ["train.packed_length=auto", "train.per_device_train_batch_size=1",
                           "train.gradient_accumulation_steps=1"])
    with pytest.raises(ConfigError, match="set train.per_device_train_batch_size=1 and train.gradient_accumulation_steps=1"):
        load_config(None, ["train.packing=true", "train.packed_length=auto"])
    assert load_config(None, ["train.gradient_checkpointing=auto"]).train.gradient_checkpointing == "auto"


def test_gradient_checkpointing_auto_follows_the_memory_budget():
    from types import SimpleNamespace

    from papertune.train.fast import activation_bytes_per_token, choose_gradient_checkpointing

    qwen_3b = SimpleNamespace(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
                              num_hidden_layers=36, head_dim=128)
    per_token = activation_bytes_per_token(qwen_3b)
    # Measured on an H200: 8,192 tokens without checkpointing took ~36.5 GiB of activations; the estimate
    # must not be below that (it decides whether a run fits).
    assert 36.5 * 2**30 <= per_token * 8192 <= 1.5 * 36.5 * 2**30
    assert choose_gradient_checkpointing("auto", qwen_3b, 8192, budget_bytes=130 * 2**30) is False
    assert choose_gradient_checkpointing("auto", qwen_3b, 8192, budget_bytes=16 * 2**30) is True
    assert choose_gradient_checkpointing("auto", qwen_3b, 8192, budget_bytes=None) is True  # CPU: no budget known
    assert choose_gradient_checkpointing("false", qwen_3b, 8192, budget_bytes=1) is False


def test_varlen_attention_falls_back_to_sdpa_off_cuda():
    """Off CUDA (or for padded batches) papertune_varlen is exactly SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from papertune.train.fast import papertune_varlen_attention

    class Module:
        is_causal, num_key_value_groups, training = True, 2, False

    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    ours, _ = papertune_varlen_attention(Module(), q, k, v, None, scaling=8 ** -0.5, cu_seq_lens_q=cu)
    reference, _ = sdpa_attention_forward(Module(), q, k, v, None, scaling=8 ** -0.5)
    assert torch.equal(ours, reference)


def test_final_hidden_states_come_through_the_wrapper_and_the_head_is_restored(tiny_model):
    """The fused loss takes the decoder's output by calling the (PEFT, and under DDP the DDP) wrapper itself
    with the LM head bypassed: the same states as the inner decoder's, and the head is put back."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from papertune.train.fast import final_hidden_states

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    head = model.get_base_model().lm_head
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(module))  # the wrapper's forward ran
    hidden, weight = final_hidden_states(model, {"input_ids": ids})
    inner = model.get_base_model().model(input_ids=ids, use_cache=False).last_hidden_state
    assert calls and torch.allclose(hidden, inner) and hidden.shape[-1] == model.config.hidden_size
    assert model.get_base_model().lm_head is head and weight is head.weight


def _ddp_rank(rank: int, model_dir: str, port: int, out: str) -> None:
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForCausalLM

    from papertune.train.fast import final_hidden_states

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ddp = DistributedDataParallel(model)
    ids = torch.tensor([[5 + rank, 6, 7, 8, 9 + 3 * rank]])  # different data on each rank
    for route in ("wrapper", "inner"):
        ddp.zero_grad()
        if route == "wrapper":
            hidden, weight = final_hidden_states(ddp, {"input_ids": ids})
        else:  # what the fused loss must not do: the inner decoder, past DDP's forward
            hidden, weight = model.get_base_model().model(input_ids=ids).last_hidden_state, model.get_base_model().lm_head.weight
        logits = hidden[:, :-1] @ weight.T
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        torch.save(grads, f"{out}/{route}-{rank}.pt")
    dist.destroy_process_group()


def test_fused_loss_route_keeps_ddp_gradients_in_sync(tmp_path, tiny_model):
    """Under DistributedDataParallel (gloo, 2 CPU processes) the gradients are all-reduced only when the
    forward runs through the DDP wrapper: final_hidden_states does; the inner decoder would not."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(str(tiny_model), port, str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / f"{name}.pt")  # noqa: E731
    assert torch.allclose(load("wrapper-0"), load("wrapper-1"), atol=1e-7)
    assert not torch.allclose(load("inner-0"), load("inner-1"), atol=1e-5)  # the check can fail


@pytest.mark.slow
def test_torch_compile_keeps_loss_and_lora_gradients(tiny_model):
    """train.torch_compile: the compiled decoder layers (varlen attention left eager) give the loss and LoRA
    gradients of the eager model on a packed row, and only the decoder layers are compiled."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from papertune.config import TrainConfig
    from papertune.train.fast import _decoder_layers
    from papertune.train.model import load_for_training

    def loss_and_grads(compiled: bool):
        cfg = TrainConfig(model=str(tiny_model), backend="hf", load_in_4bit=False, packing=True, max_seq_length=64,
                          gradient_checkpointing=False, torch_compile=compiled, lora_r=4, lora_alpha=8)
        torch.manual_seed(0)
        model, _ = load_for_training(cfg, "hf")
        with torch.no_grad():  # non-zero B, as after some training, so that A gets gradients too
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
        layers = _decoder_layers(model)
        assert all((getattr(layer, "_compiled_call_impl", None) is not None) == compiled for layer in layers)
        generator = torch.Generator().manual_seed(1)
        examples = [{"input_ids": torch.randint(5, 400, (n,), generator=generator).tolist()} for n in (9, 17, 6)]
        for example in examples:
            example["labels"] = list(example["input_ids"])
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    eager_loss, eager = loss_and_grads(False)
    compiled_loss, compiled = loss_and_grads(True)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert eager.keys() == compiled.keys() and all(g.abs().sum() > 0 for g in eager.values())
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)


def test_torch_compile_is_validated():
    with pytest.raises(ConfigError, match="train.torch_compile=true needs train.backend=hf"):
        load_config(None, ["train.torch_compile=true", "train.backend=unsloth"])


def test_lora_input_casts_skipped_under_autocast_give_bitwise_the_same_step(tmp_path, tiny_model):
    """PEFT casts each LoRA input to the float32 adapter's dtype and autocast casts it back: skipping both
    copies must change no loss or gradient bit; build_trainer skips them only with mixed precision."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM

    from papertune.config import TrainConfig
    from papertune.train.fast import skip_lora_input_casts
    from papertune.train.stage import sft_config, build_trainer

    def lora_model():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.data = param.data.float()
                if "lora_B" in name:
                    param.data.normal_(std=0.1)
        return model

    ids = torch.randint(5, 400, (2, 33), generator=torch.Generator().manual_seed(2))

    def step(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    casting, skipping = lora_model(), lora_model()
    assert skip_lora_input_casts(skipping) == 6  # 2 layers x 3 target modules
    loss_a, grads_a = step(casting)
    loss_b, grads_b = step(skipping)
    assert loss_a == loss_b and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)

    tokenizer = _tokenizer(str(tiny_model))
    data = Dataset.from_list([{"input_ids": ids[0].tolist(), "labels": ids[0].tolist()}])
    cfg = TrainConfig(model=str(tiny_model), backend="hf", load_in_4bit=False)
    for mixed_precision in (False, True):
        args = sft_config(cfg, tmp_path / str(mixed_precision), False, True)
        args.bf16 = mixed_precision
        trainer = build_trainer(cfg, "hf", lora_model(), tokenizer, data, data, args)
        flags = {m.cast_input_dtype_enabled for m in trainer.model.modules() if isinstance(m, BaseTunerLayer)}
        assert flags == {not mixed_precision}


def test_fused_loss_is_scaled_for_data_parallel_like_transformers_loss(tmp_path, tiny_model, monkeypatch):
    """Under data parallel num_items_in_batch counts every rank's labelled tokens and DDP averages the
    gradients over ranks, so the fused loss must be multiplied by the number of processes (as transformers'
    own loss is); without it a 2-GPU run logged half the loss and took half-sized gradients (found on the H200s)."""
    from accelerate import Accelerator
    from datasets import Dataset

    from papertune.config import TrainConfig
    from papertune.train import fast
    from papertune.train.model import load_for_training
    from papertune.train.stage import sft_config, build_trainer

    def summed_loss(model, inputs, num_items_in_batch=None):  # Liger's kernel needs CUDA; the same contract
        labels = inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        total = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        return total / num_items_in_batch

    monkeypatch.setattr(fast, "fused_causal_lm_loss", summed_loss)
    cfg = TrainConfig(model=str(tiny_model), backend="hf", load_in_4bit=False)
    model, tokenizer = load_for_training(cfg, "hf")
    ids = list(range(5, 40))
    data = Dataset.from_list([{"input_ids": ids, "labels": ids}])
    trainer = build_trainer(cfg, "hf", model, tokenizer, data, data, sft_config(cfg, tmp_path, False, True))
    trainer.fused_loss = True
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids])}
    one = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(68))
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    two = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(68))
    assert two.item() == pytest.approx(2 * one.item())


def test_plan_picks_settings_from_the_memory_cap(monkeypatch):
    """train.memory_cap_gib: on a whole H200 the 3B model's NF4 weights are dequantized and checkpointing is
    off; capped at 16 GiB the same 8,192-token rows train in NF4 with checkpointing (measured peak 7.8 GiB)."""
    from types import SimpleNamespace

    from papertune.config import TrainConfig
    from papertune.train import fast

    qwen_3b = SimpleNamespace(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
                              num_hidden_layers=36, head_dim=128, vocab_size=151936)
    # The NF4 model as bitsandbytes stores it: ~2.8e9 linear weights packed two per uint8.
    model = SimpleNamespace(config=qwen_3b,
                            parameters=lambda: [torch.zeros((), dtype=torch.uint8).expand(1_400_000_000)])
    allocated = 2.2 * 2**30
    card = 139.8 * 2**30
    monkeypatch.setattr(fast, "memory_budget_bytes",
                        lambda cap: int((min(card, cap * 2**30) if cap else card) - allocated))
    monkeypatch.setattr(fast, "resolve_fused_cross_entropy", lambda setting: True)
    settings = dict(packing=True, packed_length=8192, per_device_train_batch_size=1, dequantize_base="auto",
                    gradient_checkpointing="auto", fused_cross_entropy="auto")
    whole = fast.plan(TrainConfig(**settings, memory_cap_gib=0), model)
    capped = fast.plan(TrainConfig(**settings, memory_cap_gib=16), model)
    assert (whole["dequantize_base"], whole["gradient_checkpointing"]) == (True, False)
    assert (capped["dequantize_base"], capped["gradient_checkpointing"]) == (False, True)
    assert capped["budget_gib"] < 16 < whole["budget_gib"]

    # packed_length=auto: ~32 examples per optimizer step. The seed mix (253 tokens on average) and the build
    # stage's (427) on a whole H200: one row per step, 8,192 and 14,336 tokens (13,664 rounded up to 1,024).
    settings.update(packed_length="auto", packed_examples_per_step=32)
    seed = fast.plan(TrainConfig(**settings), model, 253.2)
    build = fast.plan(TrainConfig(**settings), model, 427.0)
    assert (seed["packed_length"], seed["gradient_accumulation_steps"]) == (8192, 1)
    assert (build["packed_length"], build["gradient_accumulation_steps"]) == (14336, 1)
    assert build["dequantize_base"] and not build["gradient_checkpointing"] and build["examples_per_step"] == 33.6
    # An 80 GiB card: the same step in two rows that fit without checkpointing.
    card = 79.2 * 2**30
    h100 = fast.plan(TrainConfig(**settings), model, 427.0)
    assert (h100["packed_length"], h100["gradient_accumulation_steps"], h100["gradient_checkpointing"]) == (7168, 2, False)
    # 16 GiB: NF4 kept, rows of the longest example's 2,048 tokens, 7 per step, still without checkpointing.
    card = 139.8 * 2**30
    small = fast.plan(TrainConfig(**settings, memory_cap_gib=16), model, 427.0)
    assert (small["dequantize_base"], small["gradient_checkpointing"]) == (False, False)
    assert (small["packed_length"], small["gradient_accumulation_steps"]) == (2048, 7)
    with pytest.raises(ValueError, match="mean length"):
        fast.plan(TrainConfig(**settings), model)
    # torchrun on 2 GPUs: each rank plans half the step, so a step still holds ~32 examples.
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_rank = fast.plan(TrainConfig(**settings), model, 427.0)
    assert (per_rank["packed_length"], per_rank["gradient_accumulation_steps"]) == (7168, 1)


def test_packed_rows_never_exceed_what_fits():
    from papertune.train.fast import packed_rows

    assert packed_rows(14336, 2048, None) == (14336, 1)
    assert packed_rows(14336, 2048, 13400) == (7168, 2)
    assert packed_rows(14336, 2048, 5000) == (4096, 4)  # 3 rows would round up to 5,120 tokens each
    assert packed_rows(14336, 2048, 100) == (2048, 7)  # never shorter than the longest example
    for fits in range(2048, 20000, 97):
        row, accumulation = packed_rows(14336, 2048, fits)
        assert row <= max(fits, 2048) and row * accumulation >= 14336 and row % 1024 == 0


def test_fused_kernels_settings(monkeypatch):
    """train.fused_kernels: auto is off without CUDA; true without liger-kernel, or with the Unsloth
    backend, is an error naming the field. (The kernels themselves need CUDA: checked on the H200.)"""
    import importlib.util

    from papertune.train import fast

    assert load_config(None, ["train.fused_kernels=auto"]).train.fused_kernels == "auto"
    with pytest.raises(ConfigError, match="train.fused_kernels=true needs train.backend=hf"):
        load_config(None, ["train.fused_kernels=true", "train.backend=unsloth"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fast.apply_fused_kernels(object(), "auto") is False
    assert fast.apply_fused_kernels(object(), False) is False
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="train.fused_kernels=true needs liger-kernel"):
        fast.apply_fused_kernels(object(), True)
