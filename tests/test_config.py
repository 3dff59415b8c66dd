from __future__ import annotations

from pathlib import Path

import pytest

from papertune.config import IngestConfig, PapertuneConfig, load_config
from papertune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "configs").glob("*.yaml"))


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, PapertuneConfig)
    assert cfg.ingest == IngestConfig()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_profile_loads_and_validates(profile: Path):
    cfg = load_config(profile)
    cfg.validate()
    assert cfg.run_dir


def test_profiles_exist():
    assert {p.name for p in PROFILES} >= {"cpu.yaml", "gpu.yaml"}


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
    from papertune.pipeline import available_profiles, profile_path

    assert available_profiles() == sorted(p.stem for p in PROFILES)
    for profile in PROFILES:
        packaged = profile_path(profile.stem)
        assert packaged.read_bytes() == profile.read_bytes(), (
            f"{packaged} differs from {profile}; copy it: cp {profile} {packaged}")


@pytest.mark.parametrize("name", ["cpu", "gpu", "gpu-fast"])
def test_every_packaged_profile_loads_and_validates(name: str):
    from papertune.pipeline import profile_path, resolve_config_file

    assert resolve_config_file(name) == profile_path(name)
    cfg = load_config(profile_path(name))
    cfg.validate()
    assert cfg.run_dir == f"runs/{name}"


@pytest.mark.parametrize(("cuda", "expected"), [(True, "gpu-fast"), (False, "cpu")])
def test_run_without_config_picks_the_profile_from_the_hardware(monkeypatch, caplog, cuda: bool, expected: str):
    import logging

    import torch

    from papertune.pipeline import profile_path, resolve_config_file

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    caplog.set_level(logging.INFO, logger="papertune")
    assert resolve_config_file(None) == profile_path(expected)
    assert f"using the {expected} profile" in caplog.text


def test_a_config_argument_is_a_file_or_a_profile_name(tmp_path: Path):
    from papertune.pipeline import resolve_config_file

    own = tmp_path / "mine.yaml"
    own.write_text("run_dir: runs/mine\n")
    assert resolve_config_file(str(own)) == own
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(resolve_config_file(str(tmp_path / "cpu-typo.yaml")))
