"""The advice the tool prints works as printed: the demo's closing ``papertune ask`` line, run on a trained run
directory without --config (it loads the config the run was made with), and what to rerun after SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from helpers import REPO, built_run, tiny_overrides, write_chunks
from papertune import pipeline
from papertune.cli import main
from papertune.errors import ExitCode
from papertune.train.trainer import PreemptionCallback


def demo_advice() -> str:
    """The command line scripts/demo.sh prints after "Ask the tuned model:", as the shell will run it."""
    script = (REPO / "scripts" / "demo.sh").read_text(encoding="utf-8")
    match = re.search(r'Ask the tuned model[^:]*: (.*)" >&2', script)
    assert match, "scripts/demo.sh no longer prints 'Ask the tuned model ...: ...'"
    return match.group(1).replace('\\"', '"')


def test_the_demo_advice_answers_as_printed(trained_run, tmp_path):
    command = demo_advice()
    assert command.startswith(".venv/bin/papertune ask --run-dir $RUN_DIR")
    # The demo's layout: .venv and RUN_DIR (runs/cpu) relative to the folder the demo runs in.
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    run = tmp_path / "runs" / "cpu"
    shutil.copytree(trained_run, run)  # a copy in another place: the recorded run_dir is overridden by --run-dir
    write_chunks(run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(["bash", "-c", f"RUN_DIR=runs/cpu; {command}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Sources (* cited in the answer):" in proc.stdout and "grounded in 4 passages" in proc.stderr
    assert f"config: {Path('runs/cpu') / 'config.yaml'}" in proc.stderr  # the run's own config, said so


def _stop_at_first_step(monkeypatch) -> None:
    """Training stops as after a SIGTERM: at the end of the first step, with a checkpoint."""
    on_step_end = PreemptionCallback.on_step_end

    def requested(self, *args, **kwargs):
        self.requested = True
        return on_step_end(self, *args, **kwargs)

    monkeypatch.setattr(PreemptionCallback, "on_step_end", requested)


def test_after_sigterm_each_command_says_how_to_continue(tmp_path, tiny_model, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="papertune")
    _stop_at_first_step(monkeypatch)
    run = built_run(tmp_path, tiny_model)
    sets = [x for o in tiny_overrides(run, tiny_model, max_steps=4, early_stopping_patience=0) for x in ("--set", o)]
    # papertune train: with --resume.
    assert main(["train", *sets]) == ExitCode.PREEMPTED
    assert "training stopped on SIGTERM after saving" in caplog.text and "rerun with --resume" in caplog.text
    caplog.clear()
    # papertune run: the same command again (it resumes by itself); run has no --resume.
    assert main(["run", "--run-dir", str(run), "--only", "train", *sets]) == ExitCode.PREEMPTED
    assert "training stopped on SIGTERM after saving" in caplog.text
    assert "--resume" not in caplog.text
    assert "rerun the same command to continue from train" in caplog.text
    assert json.loads((run / pipeline.SUMMARY_JSON).read_text())["status"] == "failed"
