"""The ``papertune`` command: one subcommand per stage, each a thin layer over the stage's ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import papertune
from papertune import pipeline
from papertune.config import PapertuneConfig, load_config
from papertune.errors import ConfigError, ExitCode, PapertuneError, PreemptedError
from papertune.inference.vllm_engine import release_engines
from papertune.profiles import choose_config_file
from papertune.rundir import REPORT, SUMMARY_MD
from papertune.stage import StageSpec

log = logging.getLogger("papertune")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="CONFIG",
                        help="YAML config (e.g. configs/cpu.yaml) or profile name (cpu, gpu, gpu-fast); default: the "
                        "config --run-dir's run was made with (RUN/config.yaml), else the defaults")
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


def _config(args: argparse.Namespace, extra: list[str] | None = None, *, config_file: str | None = None,
            pick_for_machine: bool = False) -> tuple[PapertuneConfig, Path | None]:
    """The config of a command and the file it came from: --config (a YAML file or a profile name), else the
    config recorded in --run-dir's run directory, else the profile for this machine (papertune run) or the
    defaults; then --set, then the command's own options."""
    overrides = list(args.overrides) + list(extra or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    path = choose_config_file(args.config or config_file, args.run_dir, pick_for_machine=pick_for_machine)
    return load_config(path, overrides), path


def _stage_command(module: ModuleType) -> Callable[[argparse.Namespace], int]:
    """``papertune <stage>``: the config with the stage's options applied, then ``module.run``."""
    spec: StageSpec = module.SPEC

    def command(args: argparse.Namespace) -> int:
        values = {option: getattr(args, option.dest) for option in spec.options}
        extra = [f"{o.setting}={value}" for o, value in values.items() if o.setting and value is not None]
        cfg, _ = _config(args, extra)
        try:
            out = module.run(cfg, **{o.dest: value for o, value in values.items() if o.switch})
        except PreemptedError as exc:  # only a stage with --resume stops this way (train)
            raise PreemptedError(f"{exc}; rerun with --resume to continue") from exc
        failures = spec.failures(Path(cfg.run_dir)) if spec.failures else []
        if failures:
            report = Path(cfg.run_dir) / spec.directory / REPORT
            log.error("%s: %d input(s) failed; see %s", spec.name, len(failures), report)
            for message in failures:
                log.error("  %s", message)
            return ExitCode.PARTIAL
        log.info("wrote %s", out)
        return ExitCode.OK

    return command


def _add_stage_parser(sub: Any, module: ModuleType) -> None:
    spec: StageSpec = module.SPEC
    p = sub.add_parser(spec.name, help=spec.help, description=spec.description)
    for option in spec.options:
        if option.switch:
            p.add_argument(*option.flags, action="store_true", help=option.help)
        elif option.flags[0].startswith("-"):
            p.add_argument(*option.flags, type=option.type, metavar=option.metavar, help=option.help)
        else:
            p.add_argument(*option.flags, nargs="?", type=option.type, metavar=option.metavar, help=option.help)
    _common(p)
    p.set_defaults(func=_stage_command(module))


def _retrieval_settings(args: argparse.Namespace) -> list[str]:
    """--closed-book and --top-k as settings (retrieval.grounded, retrieval.top_k)."""
    extra = ["retrieval.grounded=false"] if args.closed_book else []
    if getattr(args, "top_k", None) is not None:
        extra.append(f"retrieval.top_k={args.top_k}")
    return extra


def _ask_options(args: argparse.Namespace) -> dict:
    return {"merged": args.merged, "base_only": args.base_only, "cite": args.cite,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}


def cmd_ask(args: argparse.Namespace) -> int:
    from papertune import ask

    ask.ask(_config(args, _retrieval_settings(args))[0], args.question, **_ask_options(args))
    return ExitCode.OK


def cmd_chat(args: argparse.Namespace) -> int:
    from papertune import ask

    ask.chat(_config(args, _retrieval_settings(args))[0], sys.stdin, prompt="> " if sys.stdin.isatty() else None,
             **_ask_options(args))
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace) -> int:
    from papertune import serve

    extra = [f"serve.{name}={value}" for name, value in
             (("host", args.host), ("port", args.port), ("api_key_env", args.api_key_env)) if value is not None]
    if args.cite is not None:
        extra.append(f"serve.cite={str(args.cite).lower()}")
    serve.run(_config(args, extra + _retrieval_settings(args))[0], merged=args.merged, base_only=args.base_only)
    return ExitCode.OK


def _ask_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--merged", metavar="DIR", help="a merged model folder (e.g. RUN/train/merged) instead of base + adapter")
    which.add_argument("--base-only", action="store_true", help="the base model without the adapter (for comparison)")
    parser.add_argument("--closed-book", action="store_true",
                        help="answer from the model alone, without retrieved passages (retrieval.grounded: false)")
    parser.add_argument("--cite", action="store_true",
                        help="with --closed-book: also list the passages (documents, pages) retrieval finds for the "
                        "question (grounded answers always list their sources)")
    parser.add_argument("--top-k", type=int, help="passages retrieved per question (retrieval.top_k, default 4)")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (evaluate.max_new_tokens)")
    parser.add_argument("--temperature", type=float, help="0: greedy (default, evaluate.temperature)")
    _common(parser)


def cmd_run(args: argparse.Namespace) -> int:
    if args.config and args.config_file:
        raise ConfigError(f"give the config once: {args.config_file!r} or --config {args.config!r}")
    extra = [f"ingest.docs_dir={args.docs}"] if args.docs else []
    cfg, path = _config(args, extra, config_file=args.config_file, pick_for_machine=True)
    result = pipeline.run_pipeline(cfg, from_stage=args.from_stage, to_stage=args.to_stage, only=args.only,
                                   force=args.force, config_file=path)
    if result.exit_code == ExitCode.PARTIAL:
        log.error("finished, but some documents failed (listed in %s)", Path(cfg.run_dir) / SUMMARY_MD)
    return result.exit_code


# Every stage has a command; these are the stages papertune run does not run.
COMMAND_ONLY_STAGES = ("papertune.export",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="papertune",
        description="Turn a folder of AI-research documents into a fine-tuned question-answering model.",
    )
    parser.add_argument("--version", action="version", version=f"papertune {papertune.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for module_name in (*pipeline.STAGE_MODULES, *COMMAND_ONLY_STAGES):
        _add_stage_parser(sub, importlib.import_module(module_name))

    p = sub.add_parser(
        "run",
        help="the whole job: ingest -> generate -> curate -> augment -> build -> train -> evaluate",
        description="Run every stage in one run directory, skipping each stage whose outputs are current (same "
        "input files and settings as when it last finished; recorded in RUN/<stage>/stage_fingerprint.json). "
        "An interrupted run continues where it stopped (training from its last checkpoint). Ends with "
        "RUN/summary.md and RUN/summary.json. Exit code 3: finished, but some documents failed.",
    )
    p.add_argument("config_file", nargs="?", metavar="CONFIG",
                   help="YAML config or profile name (cpu, gpu, gpu-fast); default: the config --run-dir's run was "
                   "made with (RUN/config.yaml), else gpu-fast when a CUDA GPU is present, else cpu")
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
        help="answer one question with the tuned model from retrieved passages, streamed to the terminal",
        description="Answer QUESTION with train.model + RUN/train/adapter (or --merged / --base-only), with the "
        "training chat template and system prompt; tokens are printed as they are generated (greedy by default). "
        "Grounded by default: the retrieval.top_k passages of RUN/chunks.jsonl that best match the question go "
        "into the prompt, and the answer is followed by its sources (document, page, section), the cited ones "
        "marked; --closed-book asks the model alone.",
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
        "POST /v1/chat/completions (streaming too) with the training chat template and system prompt, grounded "
        "in the passages of RUN/chunks.jsonl retrieved for the last user message (--closed-book: the model "
        "alone), answers carrying papertune_citations (those passages: documents, pages, cited or not), and a "
        "chat page at / "
        "(/?q=QUESTION asks on load). Binds 127.0.0.1:8000 by default (the serve section of the config).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--merged", metavar="DIR", help="a merged model folder (e.g. RUN/train/merged) instead of base + adapter")
    which.add_argument("--base-only", action="store_true", help="the base model without the adapter")
    p.add_argument("--host", help="address to bind (serve.host, default 127.0.0.1; any other needs --api-key-env)")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key clients send as "
                   "`Authorization: Bearer KEY` (serve.api_key_env; required off loopback)")
    p.add_argument("--port", type=int, help="port (serve.port, default 8000; 0: any free port)")
    p.add_argument("--closed-book", action="store_true",
                   help="answer from the model alone, without retrieved passages (retrieval.grounded: false)")
    p.add_argument("--cite", action=argparse.BooleanOptionalAction, default=None,
                   help="with --closed-book: add papertune_citations, the passages retrieval finds for the question "
                   "(serve.cite, default on; grounded answers always carry the passages they were given)")
    _common(p)
    p.set_defaults(func=cmd_serve)
    return parser


# JAX, where a GPU stack installs it beside torch, takes 75% of the GPU's memory as soon as anything imports and
# initialises it (a library probing for it is enough); papertune's models need that memory, and papertune never
# runs JAX, so JAX is kept off the GPU altogether (its GPU client also works on the card beside vLLM while vLLM
# captures CUDA graphs). A user's own settings are kept.
PROCESS_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_PLATFORMS": "cpu"}


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)
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
    finally:
        release_engines()  # a vLLM engine's own process would keep this one from ending


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
