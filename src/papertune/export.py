"""``papertune export``: the tuned model in the forms people load, checked against each other.

Writes ``RUN/export/`` (``export.formats`` picks the forms):
  adapter/    the LoRA adapter (safetensors) with tokenizer and chat template, for PEFT over the base model
  merged/     the adapter merged into a 16-bit copy of the base model: loads with transformers and vLLM
  gguf/       ``model-<export.gguf_type>.gguf``: the merged model as one GGUF file (f32, f16, bf16 or q8_0) for
              llama.cpp, Ollama and LM Studio, with tokenizer and chat template inside (see papertune.gguf_export)
  README.md   a model card: base model, training settings, data counts, evaluation results, loss table
  report.json which forms were written, and whether each gives the same greedy answers as base + adapter

The checks run on ``export.verify_questions`` test questions. adapter and merged must give identical greedy
tokens. The GGUF file is loaded back twice: by transformers (which dequantizes it) and, when the xllamacpp wheel
is installed, by llama.cpp itself, which must also tokenize the prompts exactly as the training tokenizer does.
Each must predict the reference answers' next tokens (teacher-forced: from the reference prefix) as base + adapter
does, except at near ties that the rounding tips: where base + adapter rated the file's token within 0.1 nats of
its own choice (bf16: 0.25, q8_0: 0.5), and on at least 90% of the tokens (papertune.gguf_export.NEAR_TIE_NATS).
In practice f16 answers come out identical, and q8_0 ones differ in a token or two, late in an answer.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from papertune.config import PapertuneConfig, config_to_dict
from papertune.evaluate import load_test_split
from papertune.inference import (
    Decoding,
    GenerationRequest,
    adapter_path,
    attach_adapter,
    check_adapter,
    generate_batch,
    load_for_answering,
)
from papertune.rundir import DATASET, EXPORT_REPORT, TRAIN_ADAPTER, record_stage, write_json_atomic, write_text_atomic
from papertune.stage import StageSpec, run_files

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
GGUF_DIR = "gguf"


def _copy_dir(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _write_gguf(source: Path, dest_dir: Path, gguf_type: str, name: str) -> dict[str, Any]:
    """``dest_dir/model-<type>.gguf`` from the merged folder ``source``; the folder is replaced whole."""
    from papertune.gguf_export import convert, gguf_filename

    tmp = dest_dir.with_name(f".{dest_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    info = convert(source, tmp / gguf_filename(gguf_type), gguf_type, name=name)
    shutil.rmtree(dest_dir, ignore_errors=True)
    tmp.rename(dest_dir)
    info["file"] = f"{dest_dir.name}/{info['file']}"
    return info


def greedy_token_ids(model: Any, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int,
                     eos_token_id: Any = None) -> list[int]:
    """The greedy continuation's token ids (papertune.inference); ends with the EOS token if it stopped on one."""
    if max_new_tokens < 1:
        return []
    request = GenerationRequest(list(prompt_ids), Decoding(max_new_tokens=max_new_tokens))
    return generate_batch(model, tokenizer, [request], eos_token_id=eos_token_id)[0].token_ids


def _agreement(generate: Callable[[list[int], int], list[int]], prompt_ids: list[list[int]],
               reference: list[list[int]]) -> dict[str, Any]:
    """How far ``generate`` follows the reference answers.

    ``identical``: questions whose greedy answer is the reference token for token. ``token_agreement``: the share
    of reference tokens that are also the candidate's greedy next token after the reference prefix (teacher-forced
    top-1 agreement); ``disagreements``: where not, and the candidate's token there (None: it gave none). It costs
    one generation per question plus one per disagreement: the candidate continues from the reference prefix until
    it departs, and is restarted one token after that.
    """
    identical = matched = total = 0
    disagreements: list[dict[str, Any]] = []
    for q, (ids, ref) in enumerate(zip(prompt_ids, reference)):
        pos = same = 0
        while pos < len(ref):
            out = generate(ids + ref[:pos], len(ref) - pos)
            k = 0
            while k < len(out) and k < len(ref) - pos and out[k] == ref[pos + k]:
                k += 1
            same += k
            pos += k
            if pos < len(ref) and (k < len(out) or not out):  # the candidate's next token differs here
                disagreements.append({"question": q, "position": pos, "reference_token": ref[pos],
                                      "token": out[k] if k < len(out) else None})
                pos += 1
        identical += same == len(ref)
        matched += same
        total += len(ref)
    return {"questions": len(reference), "identical": identical,
            "token_agreement": round(matched / total, 4) if total else 1.0, "disagreements": disagreements}


def _reference_margins(model: Any, prompt_ids: list[list[int]], reference: list[list[int]],
                       disagreements: list[dict[str, Any]]) -> None:
    """Add to each disagreement how much less likely the reference model found the candidate's token than its own
    (log-probability gap in nats; None where the candidate gave no token)."""
    import torch

    for q in sorted({d["question"] for d in disagreements}):
        ids = torch.tensor([prompt_ids[q] + reference[q]], device=model.device)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        for d in disagreements:
            if d["question"] == q:
                row = logprobs[len(prompt_ids[q]) - 1 + d["position"]]
                d["reference_margin"] = (None if d["token"] is None or d["token"] >= row.shape[0] else
                                         round(float(row[d["reference_token"]] - row[d["token"]]), 4))


def _gguf_verdict(result: dict[str, Any], gguf_type: str) -> bool:
    """The rule in papertune.gguf_export: only near ties of base + adapter may differ, and few of them."""
    from papertune.gguf_export import MIN_TOKEN_AGREEMENT, NEAR_TIE_NATS

    if "error" in result:
        return False
    if "tokenizer_identical" in result and result["tokenizer_identical"] != result["questions"]:
        return False
    near_ties = all(d.get("reference_margin") is not None and d["reference_margin"] <= NEAR_TIE_NATS[gguf_type]
                    for d in result["disagreements"])
    return near_ties and result["token_agreement"] >= MIN_TOKEN_AGREEMENT


def _check_gguf(path: Path, gguf_type: str, prompts: list[str], prompt_ids: list[list[int]],
                reference: list[list[int]], max_new_tokens: int, reference_model: Any, tokenizer: Any,
                eos_token_id: Any) -> tuple[bool, dict[str, Any]]:
    """The GGUF file against the reference answers in transformers and (where installed) llama.cpp."""
    from transformers import AutoModelForCausalLM

    from papertune.inference.llamacpp import LlamaCppServer, thread_count, xllamacpp_version

    param = next(reference_model.parameters())
    results: dict[str, Any] = {}
    model = None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=param.dtype)
        model = model.to(param.device).eval()
        results["transformers"] = _agreement(
            lambda ids, n: greedy_token_ids(model, tokenizer, ids, n, eos_token_id), prompt_ids, reference)
    except Exception as exc:  # recorded in report.json and warned about: the other forms are still written
        log.warning("export: transformers could not run %s: %s", path, exc, exc_info=True)
        results["transformers"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        del model
        gc.collect()

    version = xllamacpp_version()
    if version is None:
        results["llama_cpp"] = {"skipped": "xllamacpp (llama.cpp's prebuilt Python wheel) is not installed: "
                                           "pip install xllamacpp"}
        log.info("export: the GGUF file was not run in llama.cpp (pip install xllamacpp to check that too)")
    else:
        runtime = None
        try:
            started = time.monotonic()
            runtime = LlamaCppServer(path, n_ctx=max(map(len, prompt_ids)) + max_new_tokens + 16,
                                     threads=min(8, thread_count(0)))
            result = _agreement(runtime.greedy, prompt_ids, reference)
            result["tokenizer_identical"] = sum(runtime.tokenize(text) == ids for text, ids in zip(prompts, prompt_ids))
            result["runtime"] = f"llama.cpp (xllamacpp {version})"
            result["seconds"] = round(time.monotonic() - started, 2)
            results["llama_cpp"] = result
        except Exception as exc:
            log.warning("export: llama.cpp could not run %s: %s", path, exc, exc_info=True)
            results["llama_cpp"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if runtime is not None:
                runtime.close()
    ran = {k: v for k, v in results.items() if "skipped" not in v}
    for result in ran.values():
        if "disagreements" in result:
            _reference_margins(reference_model, prompt_ids, reference, result["disagreements"])
    verdict = all(_gguf_verdict(r, gguf_type) for r in ran.values())
    if not verdict:
        log.warning("export: the %s GGUF file fails its check against base + adapter: %s", gguf_type, json.dumps(ran))
    return verdict, results


def _form_line(name: str, check: bool | None, detail: dict[str, Any]) -> str:
    if name != "gguf":
        verdict = "" if check is None else (" (greedy answers identical to base + adapter)" if check
                                           else " (greedy answers differ from base + adapter: see report.json)")
        return f"- `{name}/`{verdict}"
    gguf_type = detail.get("type", "?")
    line = (f"- `{detail.get('file', 'gguf/')}`: GGUF {gguf_type.upper()} for llama.cpp, Ollama and LM Studio "
            "(tokenizer and chat template inside)")
    if check is None:
        return line
    ran = [(label, detail[key]) for label, key in (("transformers", "transformers"), ("llama.cpp", "llama_cpp"))
           if key in detail and "skipped" not in detail[key]]
    runtimes = " and ".join(label for label, _ in ran) or "no runtime"
    if not check:
        return line + f"; its greedy answers fail the {gguf_type} check against base + adapter in {runtimes}: " \
                      "see report.json"
    if all(r["identical"] == r["questions"] for _, r in ran):
        return line + f"; greedy answers identical to base + adapter in {runtimes}"
    agreement = min(r["token_agreement"] for _, r in ran)
    ties = max(len(r["disagreements"]) for _, r in ran)
    return line + (f"; greedy answers match base + adapter's in {runtimes} except at {ties} near tie"
                   f"{'s' if ties > 1 else ''} that {gguf_type} rounding tips ({agreement:.1%} of next tokens "
                   "agree; see report.json)")


def _model_card(config: PapertuneConfig, run_dir: Path, formats: list[str], checks: dict[str, bool],
                details: dict[str, Any]) -> str:
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
        lines.append(_form_line(name, checks.get(name), details.get(name, {})))
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
    if "gguf" in formats and "file" in details.get("gguf", {}):
        lines += [f"With llama.cpp: `llama-server -m {details['gguf']['file']}` (OpenAI-compatible chat on port "
                  "8080; the chat template comes from the file).", ""]
    return "\n".join(lines) + "\n"


SPEC = StageSpec(
    name="export",
    directory=EXPORT_DIR,
    help="the tuned model as adapter, merged 16-bit safetensors and GGUF, with a model card (RUN/export)",
    description="Copy the LoRA adapter, merge it into a 16-bit copy of the base model (loadable by transformers "
    "and vLLM), with export.formats including gguf also write it as one GGUF file for llama.cpp/Ollama "
    "(export.gguf_type: f32, f16, bf16 or q8_0), write a model card, and check that each form gives the same "
    "greedy answers as base + adapter on a few test questions (GGUF: in transformers and, with xllamacpp "
    "installed, in llama.cpp, where tokens may differ only at near ties that the rounding tips) "
    "(RUN/export/report.json).",
    settings=("export", "train.model", "train.dtype", "train.trust_remote_code", "build.system_prompt"),
    outputs=(EXPORT_REPORT,),
    inputs=run_files(TRAIN_ADAPTER, DATASET),
)


def run(config: PapertuneConfig) -> Path:
    """Export the tuned model of ``RUN/train`` to ``RUN/export``; returns that folder."""
    from papertune.chat import render_prompt

    cfg = config.export
    run_dir = Path(config.run_dir)
    adapter = adapter_path(config)
    check_adapter(adapter, config)
    out = run_dir / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    record_stage(run_dir, EXPORT_DIR, config)

    details: dict[str, Any] = {}
    if "adapter" in cfg.formats:
        _copy_dir(adapter, out / "adapter")
    if "merged" in cfg.formats or "gguf" in cfg.formats:
        from papertune.train import merge_adapter

        merged = out / ("merged" if "merged" in cfg.formats else ".gguf-source")
        merge_adapter(config.train, adapter, merged)
        try:
            if "gguf" in cfg.formats:
                details["gguf"] = _write_gguf(merged, out / GGUF_DIR, cfg.gguf_type, run_dir.name)
        finally:
            if "merged" not in cfg.formats:
                shutil.rmtree(merged, ignore_errors=True)

    checks: dict[str, bool] = {}
    if cfg.verify_questions:
        from transformers import AutoModelForCausalLM

        rows, _ = load_test_split(run_dir)
        loaded = load_for_answering(config, base_only=True)
        base, tokenizer = loaded.model, loaded.tokenizer
        prompts = [render_prompt(tokenizer, r["question"], config.build.system_prompt)
                   for r in rows[: cfg.verify_questions]]
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        tuned = attach_adapter(base, adapter)
        eos = tuned.generation_config.eos_token_id
        reference = [greedy_token_ids(tuned, tokenizer, ids, cfg.max_new_tokens, eos) for ids in prompt_ids]
        device = next(base.parameters()).device

        def greedy_all(model: Any) -> list[list[int]]:
            return [greedy_token_ids(model, tokenizer, ids, cfg.max_new_tokens, eos) for ids in prompt_ids]

        loaders: dict[str, Callable[[], Any]] = {}
        if "adapter" in cfg.formats:
            loaders["adapter"] = lambda: attach_adapter(load_for_answering(config, base_only=True).model,
                                                        out / "adapter")
        if "merged" in cfg.formats:
            loaders["merged"] = lambda: AutoModelForCausalLM.from_pretrained(
                out / "merged", use_safetensors=True).to(device).eval()
        for name, load in loaders.items():
            model = load()
            tokens = greedy_all(model)
            del model
            gc.collect()
            checks[name] = tokens == reference
            details[name] = {"questions": len(prompts), "identical": sum(a == b for a, b in zip(tokens, reference))}
            if not checks[name]:
                log.warning("export: %s gives different greedy answers from base + adapter on %d of %d questions",
                            name, len(prompts) - details[name]["identical"], len(prompts))
        if "gguf" in cfg.formats:
            checks["gguf"], results = _check_gguf(out / details["gguf"]["file"], cfg.gguf_type, prompts, prompt_ids,
                                                  reference, cfg.max_new_tokens, tuned, tokenizer, eos)
            details["gguf"].update(results)
        del tuned, base
        gc.collect()
    details = {name: details[name] for name in cfg.formats if name in details}  # in the order of the forms
    write_json_atomic(out / "report.json", {"formats": cfg.formats, "greedy_match": checks, "details": details,
                                           "adapter": str(adapter), "base_model": config.train.model})
    write_text_atomic(out / "README.md", _model_card(config, run_dir, cfg.formats, checks, details))
    log.info("export: %s -> %s (greedy checks: %s)", ", ".join(cfg.formats), out, checks or "skipped")
    return out
