"""``papertune export``: the tuned model in the forms people load, checked against each other.

Writes ``RUN/export/``:
  adapter/    the LoRA adapter (safetensors) with tokenizer and chat template, for PEFT over the base model
  merged/     the adapter merged into a 16-bit copy of the base model: loads with transformers and vLLM
  README.md   a model card: base model, training settings, data counts, evaluation results, loss table
  report.json which forms were written, and whether each gives the same greedy answers as base + adapter

GGUF is not written yet (it needs llama.cpp's converter, which no package here ships).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from papertune.config import PapertuneConfig, config_to_dict
from papertune.rundir import record_stage, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

EXPORT_DIR = "export"


def _copy_dir(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    import torch

    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        out.append(generated[0, ids.shape[1]:].tolist())
    return out


def _model_card(config: PapertuneConfig, run_dir: Path, formats: list[str], checks: dict[str, bool]) -> str:
    def read_json(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    build = read_json(run_dir / "build" / "report.json")
    train = read_json(run_dir / "train" / "report.json")
    metrics = read_json(run_dir / "eval" / "metrics.json")
    lines = [
        f"# {Path(config.run_dir).name}: {config.train.model} fine-tuned with papertune", "",
        "A domain question-answering model: LoRA fine-tuning on question-answer pairs generated from a corpus "
        "of AI-research documents.", "",
        "## Forms", "",
    ]
    for name in formats:
        check = checks.get(name)
        verdict = "" if check is None else (" (greedy answers identical to base + adapter)" if check
                                           else " (greedy answers differ from base + adapter: see report.json)")
        lines.append(f"- `{name}/`{verdict}")
    lines += ["", "## Training", "", f"- base model: `{config.train.model}`",
              f"- backend: {train.get('backend', '?')}, steps: {train.get('global_steps', '?')}, "
              f"best validation loss: {train.get('best_eval_loss', '?')}",
              f"- data: {build.get('train', '?')} training and {build.get('test', '?')} validation pairs "
              f"(split grouped by {build.get('group_by', '?')}, seed {build.get('seed', '?')})", "",
              "```yaml", yaml.safe_dump({"train": config_to_dict(config.train)}, sort_keys=False).rstrip(), "```", ""]
    table = run_dir / "train" / "loss_table.md"
    if table.is_file():
        lines += ["## Loss", "", table.read_text(encoding="utf-8").rstrip(), ""]
    if metrics:
        lines += ["## Evaluation (held-out questions)", "", "```json",
                  json.dumps({k: v for k, v in metrics.items() if k in ("base", "tuned")}, indent=2)[:4000], "```", ""]
    lines += ["## Use", "", "The prompt is the model's chat template with the system prompt:", "",
              f"> {config.build.system_prompt}", ""]
    return "\n".join(lines) + "\n"


def run(config: PapertuneConfig) -> Path:
    """Export the tuned model of ``RUN/train`` to ``RUN/export``; returns that folder."""
    from papertune.chat import render_prompt
    from papertune.evaluate import _load_test, adapter_path, attach_adapter, check_adapter, load_base

    cfg = config.export
    run_dir = Path(config.run_dir)
    adapter = adapter_path(config)
    check_adapter(adapter, config)
    out = run_dir / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    record_stage(run_dir, EXPORT_DIR, config)

    if "adapter" in cfg.formats:
        _copy_dir(adapter, out / "adapter")
    if "merged" in cfg.formats:
        from papertune.train import merge_adapter

        merge_adapter(config.train, adapter, out / "merged")

    checks: dict[str, bool] = {}
    details: dict[str, Any] = {}
    if cfg.verify_questions:
        from transformers import AutoModelForCausalLM

        rows, _ = _load_test(run_dir)
        base, tokenizer = load_base(config)
        prompts = [render_prompt(tokenizer, r["question"], config.build.system_prompt) for r in rows[: cfg.verify_questions]]
        reference = _greedy(attach_adapter(base, adapter), tokenizer, prompts, cfg.max_new_tokens)
        candidates = {}
        if "adapter" in cfg.formats:
            fresh, _ = load_base(config)
            candidates["adapter"] = attach_adapter(fresh, out / "adapter")
        if "merged" in cfg.formats:
            candidates["merged"] = AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True).to(
                next(base.parameters()).device).eval()
        for name, model in candidates.items():
            tokens = _greedy(model, tokenizer, prompts, cfg.max_new_tokens)
            checks[name] = tokens == reference
            details[name] = {"questions": len(prompts), "identical": sum(a == b for a, b in zip(tokens, reference))}
            if not checks[name]:
                log.warning("export: %s gives different greedy answers from base + adapter on %d of %d questions",
                            name, len(prompts) - details[name]["identical"], len(prompts))
    write_json_atomic(out / "report.json", {"formats": cfg.formats, "greedy_match": checks, "details": details,
                                           "adapter": str(adapter), "base_model": config.train.model})
    write_text_atomic(out / "README.md", _model_card(config, run_dir, cfg.formats, checks))
    log.info("export: %s -> %s (greedy checks: %s)", ", ".join(cfg.formats), out, checks or "skipped")
    return out
