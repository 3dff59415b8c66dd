from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import REPO
from papertune.config import IngestConfig, PapertuneConfig, load_config
from papertune.errors import ConfigError

PROFILES = sorted((REPO / "configs").glob("*.yaml"))


def test_defaults_are_the_reports_recipe_as_the_gpu_profile_writes_it():
    """No config file: valid settings, and training's are the report's table (TrainConfig's docstring), which
    configs/gpu.yaml writes out setting by setting."""
    cfg = load_config()
    cfg.validate()
    assert isinstance(cfg, PapertuneConfig)
    assert cfg.ingest == IngestConfig()
    train = cfg.train
    # Qwen2.5-3B-Instruct in 4-bit, LoRA r=16 on all linear layers, seq 2048, batch 2 (train and eval), gradient
    # accumulation 16, lr 2e-5, 3 epochs, AdamW, evaluation every epoch; an 80/20 split with seed 3407.
    assert (train.model, train.load_in_4bit, train.lora_r, train.max_seq_length, train.per_device_train_batch_size,
            train.per_device_eval_batch_size, train.gradient_accumulation_steps, train.learning_rate,
            train.num_train_epochs, train.optim, train.eval_strategy) == (
        "Qwen/Qwen2.5-3B-Instruct", True, 16, 2048, 2, 2, 16, 2e-5, 3.0, "adamw_torch", "epoch")
    assert set(train.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (cfg.build.model, cfg.build.max_seq_length) == (train.model, train.max_seq_length)
    assert (cfg.build.test_size, cfg.build.seed) == (0.2, 3407)
    assert train.packed_examples_per_step == train.per_device_train_batch_size * train.gradient_accumulation_steps
    written = yaml.safe_load((REPO / "configs" / "gpu.yaml").read_text(encoding="utf-8"))["train"]
    # but for the sequence length: the profile trains RAFT, whose prompts hold the retrieved passages
    assert written.pop("max_seq_length") > train.max_seq_length
    assert {key: getattr(train, key) for key in written} == written


@pytest.mark.parametrize("name", ["gpu", "gpu-fast"])
def test_gpu_profiles_train_raft_on_rows_that_fit_their_passages(name: str):
    """The GPU profiles build RAFT rows (the tuned model learns to read what ask, chat and serve retrieve), and
    their sequences hold retrieval.top_k chunks of ingest.chunk_tokens plus the question and the answer."""
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert (cfg.build.mode, cfg.build.raft_source_share, cfg.build.raft_order) == ("raft", 1.0, "retrieval")
    assert cfg.build.max_seq_length == cfg.train.max_seq_length
    assert cfg.build.max_seq_length >= cfg.retrieval.top_k * cfg.ingest.chunk_tokens + 512


@pytest.mark.parametrize("name", ["gpu", "gpu-fast"])
def test_gpu_profiles_train_the_model_to_verify_its_answers_and_the_closed_book_line_works(name: str):
    """The GPU profiles add verification rows and have the tuned model check each grounded answer (with the
    retry); the closed-book override the error message and the profile's comment give loads as written."""
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert (cfg.build.raft_verify_rows, cfg.retrieval.verify, cfg.retrieval.verify_retry) == (True, True, True)
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / f"{name}.yaml", ["build.mode=closed_book"])
    line = str(err.value).split("closed book: ")[1].rstrip(")")
    assert line in " ".join((REPO / "configs" / f"{name}.yaml").read_text().replace("#", " ").split())
    closed = load_config(REPO / "configs" / f"{name}.yaml", line.replace("--set ", "").split())
    assert (closed.build.mode, closed.build.raft_verify_rows, closed.retrieval.verify) == ("closed_book", False, False)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_profile_loads_and_validates(profile: Path):
    cfg = load_config(profile)
    cfg.validate()
    assert cfg.run_dir == f"runs/{profile.stem}"  # each profile's runs apart from the others'


def test_profiles_exist():
    assert {p.name for p in PROFILES} >= {"cpu.yaml", "cpu-quality.yaml", "gpu.yaml", "gpu-fast.yaml"}


@pytest.mark.parametrize(("name", "backend", "teacher", "llm_share"), [
    ("cpu", "llamacpp", "packaged:qwen2.5-coder-0.5b-instruct", None),  # a share of the chunks, to fit 2 cores
    ("cpu-quality", "llamacpp", "packaged:qwen2.5-coder-1.5b-instruct", 1.0),  # every chunk
    ("gpu", "hf", "Qwen/Qwen2.5-3B-Instruct", None),
    ("gpu-fast", "hf", "Qwen/Qwen2.5-3B-Instruct", None),
])
def test_each_profile_generates_and_judges_with_a_real_teacher(name: str, backend: str, teacher: str,
                                                               llm_share: float | None):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    shares = cfg.generate.generators
    assert shares.get("llm", 0) > 0
    if llm_share is not None:
        assert shares == {"llm": llm_share}
    assert cfg.curate.judge_enabled
    for llm in (cfg.generate.llm, cfg.curate.judge):
        assert (llm.backend, llm.model) == (backend, teacher)
    if name.startswith("cpu"):
        assert cfg.train == load_config(REPO / "configs" / "cpu.yaml").train  # the same student and training


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/x\ningest:\n  chunk_tokens: 200\n  workers: 2\n")
    cfg = load_config(path, ["ingest.workers=1", "ingest.citations=keep", "ingest.extensions=.pdf,.md"])
    assert cfg.run_dir == "runs/x"
    assert cfg.ingest.chunk_tokens == 200
    assert cfg.ingest.workers == 1
    assert cfg.ingest.citations == "keep"
    assert cfg.ingest.extensions == [".pdf", ".md"]


def test_exponent_without_dot_is_a_number(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 2e-5\n")
    assert load_config(path).train.learning_rate == 2e-5
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 1e-3


def test_int_is_accepted_for_float_and_converted():
    cfg = load_config(None, ["ingest.doc_timeout_s=5"])
    assert cfg.ingest.doc_timeout_s == 5.0 and isinstance(cfg.ingest.doc_timeout_s, float)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("ingest.chunk_tokenz=100", "did you mean 'ingest.chunk_tokens'"),
        ("ingest.workers=two", "ingest.workers must be an integer"),
        ("ingest.workers=0", "ingest.workers must be >= 1"),
        ("ingest.ocr=maybe", "ingest.ocr must be true or false"),
        ("ingest.citations=remove", "ingest.citations must be one of 'drop', 'keep'"),
        ("ingest.segmenter=spacy", "ingest.segmenter must be one of"),
        ("ingest.min_chunk_tokens=999", "ingest.min_chunk_tokens must be >= 0 and below ingest.chunk_tokens"),
        ("ingest.extensions=pdf", "must start with a dot"),
        ("nosuchsection.x=1", "unknown setting 'nosuchsection'"),
        ("ingest", "--set expects section.key=value"),
        ("ingest.workers.deeper=1", "ingest.workers must be an integer"),
        ("run_dir.x=1", "run_dir must be a string"),
        ("build.raft_verify_rows=true", "with build.mode closed_book there are none"),
        ("build.raft_decline_copies=0.5", "with build.mode closed_book there are none"),
        ("build.raft_quote=true", "with build.mode closed_book there are none"),
        ("retrieval.verify=true", "which it learns from build.raft_verify_rows"),
    ],
)
def test_errors_name_the_field(override: str, fragment: str):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("ingest:\n  workers: -3\n")
    with pytest.raises(ConfigError, match="ingest.workers"):
        load_config(wrong)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(listy)


# --- profiles shipped in the package (papertune run without a config) ------------------------------


def test_packaged_profiles_are_the_configs():
    """``papertune run`` reads the profiles from the package (found in any install); they must stay copies of configs/."""
    from papertune.profiles import available_profiles, profile_path

    assert available_profiles() == sorted(p.stem for p in PROFILES)
    for profile in PROFILES:
        packaged = profile_path(profile.stem)
        assert packaged.read_bytes() == profile.read_bytes(), (
            f"{packaged} differs from {profile}; copy it: cp {profile} {packaged}")


@pytest.mark.parametrize("name", ["cpu", "cpu-quality", "gpu", "gpu-fast"])
def test_every_packaged_profile_loads_and_validates(name: str):
    from papertune.profiles import profile_path, resolve_config_file

    assert resolve_config_file(name) == profile_path(name)
    cfg = load_config(profile_path(name))
    cfg.validate()
    assert cfg.run_dir == f"runs/{name}"


@pytest.mark.parametrize(("cuda", "expected"), [(True, "gpu-fast"), (False, "cpu")])
def test_run_without_config_picks_the_profile_from_the_hardware(monkeypatch, caplog, cuda: bool, expected: str):
    import logging

    import torch

    from papertune.profiles import profile_path, resolve_config_file

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    caplog.set_level(logging.INFO, logger="papertune")
    assert resolve_config_file(None) == profile_path(expected)
    assert f"using the {expected} profile" in caplog.text


def test_a_config_argument_is_a_file_or_a_profile_name(tmp_path: Path):
    from papertune.profiles import resolve_config_file

    own = tmp_path / "mine.yaml"
    own.write_text("run_dir: runs/mine\n")
    assert resolve_config_file(str(own)) == own
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(resolve_config_file(str(tmp_path / "cpu-typo.yaml")))


@pytest.mark.parametrize("value", [".inf", "-.inf", "1e400", ".nan", "inf"])
def test_non_finite_numbers_are_rejected_naming_the_setting(value: str):
    with pytest.raises(ConfigError, match=r"train\.learning_rate must be a finite number; got"):
        load_config(None, [f"train.learning_rate={value}"])


def test_every_command_takes_a_profile_name(tmp_path: Path, monkeypatch):
    """``papertune train --config cpu``: a profile name works for every command, not only ``papertune run``."""
    from papertune.cli import main
    from papertune.profiles import profile_path
    from papertune.train import stage as train_stage

    seen: dict = {}
    monkeypatch.setattr(train_stage, "run", lambda config, **options: seen.update(config=config, options=options) or tmp_path)
    assert main(["train", "--config", "cpu", "--run-dir", str(tmp_path), "--resume"]) == 0
    assert seen["config"] == load_config(profile_path("cpu"), [f"run_dir={tmp_path}"])
    assert seen["config"] != load_config(None, [f"run_dir={tmp_path}"])
    assert seen["options"] == {"resume": True, "force": False}
    # A file of that name still wins over the profile.
    own = tmp_path / "cpu"
    own.write_text("train:\n  lora_r: 4\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "cpu", "--run-dir", str(tmp_path)]) == 0
    assert seen["config"].train.lora_r == 4 and seen["options"] == {"resume": False, "force": False}


@pytest.mark.parametrize("name", ["cpu", "cpu-quality", "gpu", "gpu-fast"])
def test_the_config_recorded_in_a_run_directory_loads_back_as_it_was(tmp_path: Path, name: str):
    from papertune.profiles import profile_path
    from papertune.rundir import record_run_config

    cfg = load_config(profile_path(name), [f"run_dir={tmp_path}"])
    path = record_run_config(tmp_path, cfg)
    assert path == tmp_path / "config.yaml" and load_config(path, [f"run_dir={tmp_path}"]) == cfg
    assert "run_dir" not in yaml.safe_load(path.read_text())  # the folder it is in, wherever that is moved
    mtime = path.stat().st_mtime_ns
    record_run_config(tmp_path, cfg)  # the same config again: the file is left as it was
    assert path.stat().st_mtime_ns == mtime


def test_a_command_on_a_run_directory_uses_the_config_the_run_was_made_with(tmp_path: Path, monkeypatch, caplog):
    """``papertune train --run-dir RUN`` (and ask, serve, run ...) without --config: RUN/config.yaml, then --set;
    --config replaces it."""
    import logging
    import shutil

    from papertune import pipeline
    from papertune.cli import main
    from papertune.profiles import profile_path
    from papertune.rundir import record_run_config
    from papertune.train import stage as train_stage

    run = tmp_path / "run"
    made_with = load_config(profile_path("cpu"), [f"run_dir={run}", "train.lora_r=4"])
    record_run_config(run, made_with)
    seen: dict = {}
    monkeypatch.setattr(train_stage, "run", lambda config, **options: seen.update(config=config) or run)
    caplog.set_level(logging.INFO, logger="papertune")
    assert main(["train", "--run-dir", str(run)]) == 0
    assert seen["config"] == made_with
    assert f"config: {run / 'config.yaml'}, the config this run directory was made with" in caplog.text
    assert main(["train", "--run-dir", str(run), "--set", "train.lora_r=8"]) == 0
    assert seen["config"] == load_config(profile_path("cpu"), [f"run_dir={run}", "train.lora_r=8"])
    assert main(["train", "--run-dir", str(run), "--config", "gpu"]) == 0
    assert seen["config"] == load_config(profile_path("gpu"), [f"run_dir={run}"])
    # A run directory moved elsewhere: its config, in its new place.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert main(["train", "--run-dir", str(moved)]) == 0
    assert seen["config"] == load_config(profile_path("cpu"), [f"run_dir={moved}", "train.lora_r=4"])
    # papertune run: the run's config rather than the profile for this machine.
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, **options: seen.update(config=config, options=options)
                        or pipeline.PipelineResult(run / "summary.json", 0, {}))
    assert main(["run", "--run-dir", str(run)]) == 0
    assert seen["config"] == made_with and seen["options"]["config_file"] == run / "config.yaml"
    # No recorded config: the defaults, and the log says so.
    assert main(["train", "--run-dir", str(tmp_path / "new")]) == 0
    assert seen["config"] == load_config(None, [f"run_dir={tmp_path / 'new'}"])
    assert "config: the defaults (no --config given, and no config.yaml in" in caplog.text


def test_what_a_setting_is_is_declared_on_the_field():
    from papertune.config import INPUT_SELECTION, RESUME_SAFE, SPEED_ONLY, TrainConfig, marked_settings, settings_without

    speed = marked_settings(SPEED_ONLY)
    assert {"ingest.workers", "build.num_proc", "train.dataloader_workers", "generate.llm.concurrency",
            "augment.llm.timeout_s", "evaluate.judge.max_retries", "generate.seq2seq_batch_size"} <= speed
    assert not {"ingest.chunk_tokens", "train.learning_rate", "generate.llm.model"} & speed
    assert marked_settings(INPUT_SELECTION) == {"ingest.docs_dir", "ingest.extensions", "ingest.max_pages",
                                                "ingest.max_file_mb", "ingest.doc_timeout_s", "generate.max_chunks"}
    assert "train.early_stopping_patience" in marked_settings(RESUME_SAFE)
    assert not marked_settings(RESUME_SAFE) & speed
    kept = settings_without(TrainConfig(), SPEED_ONLY, RESUME_SAFE)
    assert "dataloader_workers" not in kept and "save_total_limit" not in kept and "learning_rate" in kept
