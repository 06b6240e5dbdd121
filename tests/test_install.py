"""The configs ship inside the package: a non-editable install works from any directory."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.skipif(not (REPO / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_install_runs_from_another_directory(tmp_path):
    wheel_dir, target, elsewhere = tmp_path / "wheel", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(REPO)],
        capture_output=True, text=True,
    )
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("sortednet_cli-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    assert (target / "sortednet_cli" / "conf" / "pool" / "160.yaml").is_file()

    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import sortednet_cli; print(sortednet_cli.__file__)"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert probe.stdout.startswith(str(target)), probe.stdout + probe.stderr
    # one command of each model family: every subpackage (models, tasks, ...) shipped
    for family, pool, rows in (("cpreresnet20", "lcs7", 7), ("mobilenetv2", "mbv2_tiny", 4)):
        result = subprocess.run(
            [sys.executable, "-m", "sortednet_cli", "describe", f"model={family}", f"pool={pool}", f"hydra.run.dir=outputs/{family}"],
            cwd=elsewhere, env=env, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert f"total: {rows} sub-models" in result.stdout
        assert len((elsewhere / "outputs" / family / "pool.csv").read_text().splitlines()) == rows + 1
