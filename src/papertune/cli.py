"""The ``papertune`` command: one subcommand per stage, each a thin layer over the stage's ``run``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import papertune
from papertune.config import PapertuneConfig, load_config
from papertune.errors import ConfigError, ExitCode, PapertuneError

log = logging.getLogger("papertune")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config (e.g. configs/cpu.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set ingest.chunk_tokens=256 (repeatable)",
    )
    parser.add_argument("--run-dir", help="run directory holding every stage's files (default: run_dir of the config)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> PapertuneConfig:
    overrides = list(args.overrides) + list(extra or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(args.config, overrides)


def cmd_ingest(args: argparse.Namespace) -> int:
    from papertune import ingest

    extra = []
    if args.workers is not None:
        extra.append(f"ingest.workers={args.workers}")
    if args.docs_dir:
        extra.append(f"ingest.docs_dir={args.docs_dir}")
    cfg = _config(args, extra)
    out = ingest.run(cfg)
    failed = ingest.failed_documents(cfg.run_dir)
    if failed:
        log.error("%d document(s) failed; see %s/%s", len(failed), cfg.run_dir, ingest.REPORT_FILE)
        for doc in failed:
            log.error("  %s", doc["reason"])
        return ExitCode.PARTIAL
    log.info("wrote %s", out)
    return ExitCode.OK


def _run_stage(module_name: str):
    """A command that loads the config and calls ``papertune.<module_name>.run(config)``."""

    def command(args: argparse.Namespace) -> int:
        import importlib

        stage = importlib.import_module(f"papertune.{module_name}")
        out = stage.run(_config(args))
        log.info("wrote %s", out)
        return ExitCode.OK

    return command


def _ask_options(args: argparse.Namespace) -> dict:
    return {"merged": args.merged, "base_only": args.base_only, "cite": args.cite, "top_k": args.top_k,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}


def cmd_ask(args: argparse.Namespace) -> int:
    from papertune import ask

    ask.ask(_config(args), args.question, **_ask_options(args))
    return ExitCode.OK


def cmd_chat(args: argparse.Namespace) -> int:
    from papertune import ask

    ask.chat(_config(args), sys.stdin, prompt="> " if sys.stdin.isatty() else None, **_ask_options(args))
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace) -> int:
    from papertune import serve

    extra = [f"serve.{name}={value}" for name, value in (("host", args.host), ("port", args.port)) if value is not None]
    if args.cite is not None:
        extra.append(f"serve.cite={str(args.cite).lower()}")
    serve.run(_config(args, extra), merged=args.merged, base_only=args.base_only)
    return ExitCode.OK


def _ask_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--merged", metavar="DIR", help="a merged model folder (e.g. RUN/train/merged) instead of base + adapter")
    which.add_argument("--base-only", action="store_true", help="the base model without the adapter (for comparison)")
    parser.add_argument("--cite", action="store_true",
                        help="also list the chunks (documents, pages) most similar to the question, from an "
                        "embedding index kept in RUN/index")
    parser.add_argument("--top-k", type=int, help="chunks listed with --cite (evaluate.cite_top_k)")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (evaluate.max_new_tokens)")
    parser.add_argument("--temperature", type=float, help="0: greedy (default, evaluate.temperature)")
    _common(parser)


def cmd_train(args: argparse.Namespace) -> int:
    from papertune import train

    out = train.run(_config(args), resume=args.resume, force=args.force)
    log.info("wrote %s", out)
    return ExitCode.OK


def cmd_run(args: argparse.Namespace) -> int:
    from papertune import pipeline

    if args.config and args.config_file:
        raise ConfigError(f"give the config once: {args.config_file!r} or --config {args.config!r}")
    extra = [f"ingest.docs_dir={args.docs}"] if args.docs else []
    overrides = list(args.overrides) + extra + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    cfg, path = pipeline.load_run_config(args.config or args.config_file, overrides)
    result = pipeline.run_pipeline(cfg, from_stage=args.from_stage, to_stage=args.to_stage, only=args.only,
                                   force=args.force, config_file=path)
    if result.exit_code == ExitCode.PARTIAL:
        log.error("finished, but some documents failed (listed in %s/%s)", cfg.run_dir, pipeline.SUMMARY_MD)
    return result.exit_code


# (command, module, help, description) of the stages that only need the run directory and the config.
_STAGES = [
    (
        "generate",
        "generate",
        "chunks -> synthetic question-answer pairs (RUN/qa.jsonl)",
        "Write grounded question-answer pairs for every chunk in RUN/chunks.jsonl with the generators in "
        "generate.generators (llm, seq2seq, rules). Interrupted generation resumes where it stopped.",
    ),
    (
        "curate",
        "curate",
        "drop duplicate, unsupported or malformed pairs (RUN/qa_curated.jsonl)",
        "Filter RUN/qa.jsonl: near-duplicate questions, answers not supported by their chunk, too short or "
        "long pairs, questions that contain their answer. Dropped pairs go to RUN/qa_dropped.jsonl.",
    ),
    (
        "augment",
        "augment",
        "paraphrases, noise, entity swaps, adversarial phrasings (RUN/qa_augmented.jsonl)",
        "Add variants of the curated pairs, each switchable with a rate in the augment section; every "
        "variant carries the id of its original.",
    ),
    (
        "build",
        "build",
        "the SFT dataset: RUN/output.json and RUN/dataset/ (train/test)",
        "Split the pairs 80/20 (seed 3407) grouped by source chunk, check for leakage, format them with "
        "the target model's chat template and save a datasets DatasetDict and a dataset card.",
    ),
    (
        "evaluate",
        "evaluate",
        "base vs tuned model on the test split: loss, perplexity, answer quality (RUN/eval)",
        "Compute validation loss and perplexity of train.model with and without the adapter (RUN/train/adapter), "
        "generate answers to the held-out questions and score them against the references (ROUGE-L, token F1, "
        "exact match, embedding cosine, optional LLM judge); write RUN/eval/metrics.json, answers.jsonl, "
        "report.md and charts. evaluate.tuned=false evaluates the base model alone.",
    ),
    (
        "export",
        "export",
        "the tuned model as adapter, merged 16-bit safetensors and GGUF, with a model card (RUN/export)",
        "Copy the LoRA adapter, merge it into a 16-bit copy of the base model (loadable by transformers and "
        "vLLM), with export.formats including gguf also write it as one GGUF file for llama.cpp/Ollama "
        "(export.gguf_type: f32, f16, bf16 or q8_0), write a model card, and check that each form gives the "
        "same greedy answers as base + adapter on a few test questions (GGUF: in transformers and, with "
        "xllamacpp installed, in llama.cpp, where tokens may differ only at near ties that the rounding tips) "
        "(RUN/export/report.json).",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papertune",
        description="Turn a folder of AI-research documents into a fine-tuned question-answering model.",
    )
    parser.add_argument("--version", action="version", version=f"papertune {papertune.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "ingest",
        help="PDFs and Markdown -> clean, sentence-aligned chunks (RUN/chunks.jsonl)",
        description="Extract, clean, segment and chunk every PDF and Markdown file under DOCS_DIR. Pages "
        "without a text layer are OCRed with Tesseract. Unchanged documents are reused from the last run. "
        "Exit code 3 means some documents failed (listed in RUN/ingest/report.json); the rest were written.",
    )
    p.add_argument("docs_dir", nargs="?", metavar="DOCS_DIR", help="folder of documents (default: ingest.docs_dir)")
    p.add_argument("--workers", "-j", type=int, help="documents processed in parallel (ingest.workers)")
    _common(p)
    p.set_defaults(func=cmd_ingest)

    for command, module, help_text, description in _STAGES:
        p = sub.add_parser(command, help=help_text, description=description)
        _common(p)
        p.set_defaults(func=_run_stage(module))

    p = sub.add_parser(
        "train",
        help="LoRA/QLoRA fine-tuning on RUN/dataset (RUN/train/adapter)",
        description="Fine-tune train.model on RUN/dataset with TRL's SFTTrainer (Unsloth or transformers+PEFT). "
        "Exit code 4: the loss became NaN/inf; 5: stopped by SIGTERM after a checkpoint (rerun with --resume). "
        "Multi-GPU: accelerate launch -m papertune train ... (or torchrun --nproc_per_node N -m papertune train ...).",
    )
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--force", action="store_true",
                   help="with --resume: resume even if config/data/model changed; without: discard old checkpoints")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "run",
        help="the whole job: ingest -> generate -> curate -> augment -> build -> train -> evaluate",
        description="Run every stage in one run directory, skipping each stage whose outputs are current (same "
        "input files and settings as when it last finished; recorded in RUN/<stage>/stage_fingerprint.json). "
        "An interrupted run continues where it stopped (training from its last checkpoint). Ends with "
        "RUN/summary.md and RUN/summary.json. Exit code 3: finished, but some documents failed.",
    )
    p.add_argument("config_file", nargs="?", metavar="CONFIG",
                   help="YAML config or profile name (cpu, gpu); default: gpu when a CUDA GPU is present, else cpu")
    p.add_argument("--docs", metavar="DOCS_DIR", help="folder of documents (ingest.docs_dir)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--from", dest="from_stage", metavar="STAGE",
                       help="rerun STAGE and every later stage even if current (earlier ones only when needed)")
    which.add_argument("--only", metavar="STAGE", help="run just STAGE, even if current")
    p.add_argument("--to", dest="to_stage", metavar="STAGE", help="stop after STAGE (e.g. --to build)")
    p.add_argument("--force", action="store_true", help="rerun every stage even if current")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "ask",
        help="answer one question with the tuned model, streamed to the terminal",
        description="Answer QUESTION with train.model + RUN/train/adapter (or --merged / --base-only), with the "
        "training chat template and system prompt; tokens are printed as they are generated (greedy by default).",
    )
    p.add_argument("question", metavar="QUESTION", help="the question (quote it)")
    _ask_arguments(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser(
        "chat",
        help="ask questions one line at a time (until EOF or 'exit')",
        description="Read questions from standard input, one per line, and answer each like `papertune ask` "
        "(each on its own: the model was trained on single-turn examples). Stops at end of input or 'exit'.",
    )
    _ask_arguments(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API and a chat page over the tuned model",
        description="Serve train.model + RUN/train/adapter (or --merged / --base-only) over HTTP: GET /v1/models, "
        "POST /v1/chat/completions (streaming too) with the training chat template and system prompt, answers "
        "carrying papertune_citations (documents and pages from RUN/chunks.jsonl), and a chat page at / "
        "(/?q=QUESTION asks on load). Binds 127.0.0.1:8000 by default (the serve section of the config).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--merged", metavar="DIR", help="a merged model folder (e.g. RUN/train/merged) instead of base + adapter")
    which.add_argument("--base-only", action="store_true", help="the base model without the adapter")
    p.add_argument("--host", help="address to bind (serve.host, default 127.0.0.1; the API has no authentication)")
    p.add_argument("--port", type=int, help="port (serve.port, default 8000; 0: any free port)")
    p.add_argument("--cite", action=argparse.BooleanOptionalAction, default=None,
                   help="add papertune_citations from the chunk index in RUN/index (serve.cite, default on)")
    _common(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args))
    except PapertuneError as exc:
        log.error("%s", exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted; finished work is kept in the run directory, rerun the same command to continue")
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
