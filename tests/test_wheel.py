"""The package stands on its own: a built wheel, installed outside the source tree, finds its
built-in spaces, configs and tasks and runs a search."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A throwaway venv holding only the sieve wheel; its dependencies come from this venv's
    site-packages as a plain path (so this venv's editable sieve is *not* visible there)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = root.glob("sieve-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_installed_wheel_finds_its_files_and_searches(wheel_venv, tmp_path, tiny_model_dir, tiny_task, tiny_corpus):
    python = str(wheel_venv / "bin" / "python")
    probe = _run(wheel_venv, python, "-c", """
import json, sieve
from sieve.resources import builtin_file, builtin_names
from sieve.search.space import SpaceSpec
from sieve.config import load_yaml
from sieve.data.rotten_tomatoes import materialize_rotten_tomatoes
spaces = {n: SpaceSpec.load(n).name for n in builtin_names("search_spaces")}
print(json.dumps({"file": sieve.__file__, "spaces": spaces, "configs": builtin_names("configs"),
                  "tasks": builtin_names("tasks"), "gpu": load_yaml(builtin_file("configs", "gpu"))["generations"],
                  "tune_configs": builtin_names("tune_configs")}))
""", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    found = json.loads(probe.stdout)
    assert str(wheel_venv) in found["file"] and str(ROOT) not in found["file"]
    assert set(found["spaces"]) >= {"per_matrix", "per_block", "per_type", "nm", "evopress"}
    assert found["configs"] == ["gpu"] and found["tasks"] == ["python_names", "rotten_tomatoes"] and found["gpu"] == 30
    assert found["tune_configs"] == ["gpu"]

    help_text = _run(wheel_venv, str(wheel_venv / "bin" / "sieve"), "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "search" in help_text.stdout

    small = tmp_path / "small.yaml"
    small.write_text("validation_examples: 12\nstages: [4]\npromote: [2]\noffspring: 4\npopulation: 3\ngenerations: 1\n"
                     "calibration: {general_blocks: 4, block_len: 32, task_examples: 8, batch_size: 4}\n"
                     "evaluation: {test_examples: 8, ppl_blocks: 2, block_len: 32}\n")
    search = _run(wheel_venv, str(wheel_venv / "bin" / "sieve"), "search", "--config", str(small), "--budget", "0.5",
                  "--space", "per_block", "--model", str(tiny_model_dir), "--task", str(tiny_task), "--general",
                  str(tiny_corpus), "--device", "cpu", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert search.returncode == 0, search.stderr[-2000:]
    body = json.loads((tmp_path / "run" / "best_allocation.json").read_text())
    assert body["space"] == "per_block" and body["achieved_sparsity"] == pytest.approx(0.5, abs=0.05)
