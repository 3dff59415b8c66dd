"""Config profiles shipped in the package (``papertune/profiles/NAME.yaml``, copies of ``configs/``).

Every command's config argument is a YAML file or a profile name (cpu, cpu-quality, gpu, gpu-fast). Without one, a
command on an existing run directory loads the config that run was made with (``RUN/config.yaml``);
otherwise ``papertune run`` picks the profile for this machine and the other commands use the defaults.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from papertune.errors import ConfigError
from papertune.rundir import RUN_CONFIG

log = logging.getLogger(__name__)


def _profiles_dir() -> Path:
    return Path(str(files("papertune") / "profiles"))


def available_profiles() -> list[str]:
    """Names of the profiles shipped in the package (``papertune/profiles/NAME.yaml``, copies of ``configs/``)."""
    return sorted(p.stem for p in _profiles_dir().glob("*.yaml"))


def profile_path(name: str) -> Path:
    """A profile shipped inside the package, so it is found wherever papertune is installed."""
    path = _profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; use one of {', '.join(available_profiles())} or a YAML file")
    return path


def pick_profile() -> Path:
    """The profile for this machine: gpu-fast (the report's model and hyperparameters on papertune's fast
    training path) when PyTorch sees a CUDA GPU, else cpu. The report's recipe as written is ``gpu``."""
    import torch

    if torch.cuda.is_available():
        path = profile_path("gpu-fast")
        log.info("run: no config given; CUDA GPU found (%s): using the gpu-fast profile %s (the report's recipe "
                 "as written: --config gpu)", torch.cuda.get_device_name(), path)
    else:
        path = profile_path("cpu")
        log.info("run: no config given; no CUDA GPU: using the cpu profile %s", path)
    return path


def resolve_config_file(spec: str | None) -> Path:
    """A config argument: a YAML file, a profile name (cpu, cpu-quality, gpu, gpu-fast), or nothing (picked from
    the hardware)."""
    if not spec:
        return pick_profile()
    path = Path(spec)
    if not path.exists() and spec in available_profiles():
        return profile_path(spec)
    return path  # load_config reports a missing file


def choose_config_file(spec: str | None, run_dir: str | Path | None, *, pick_for_machine: bool) -> Path | None:
    """The config file a command loads, logged: ``spec`` (--config, a YAML file or a profile name) when given;
    else the config recorded in ``run_dir`` (--run-dir) when it has one; else the profile for this machine
    when ``pick_for_machine`` (``papertune run``), or None: the defaults."""
    if spec:
        path = resolve_config_file(spec)
        log.info("config: %s", path)
        return path
    recorded = Path(run_dir) / RUN_CONFIG if run_dir else None
    if recorded is not None and recorded.is_file():
        log.info("config: %s, the config this run directory was made with (--config to use another)", recorded)
        return recorded
    if pick_for_machine:
        return pick_profile()
    log.info("config: the defaults (no --config given%s)",
             f", and no {RUN_CONFIG} in {run_dir}" if run_dir else "")
    return None
