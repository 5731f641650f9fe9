"""The shipped type information (inline annotations, _core.pyi, py.typed) type-checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import mpool


def test_package_and_native_stubs_pass_mypy(tmp_path):
    package_dir = os.path.dirname(mpool.__file__)
    assert os.path.exists(os.path.join(package_dir, "py.typed"))
    assert os.path.exists(os.path.join(package_dir, "_core.pyi"))
    # A copy of just the package: site-packages as a whole is not ours to check.
    shutil.copytree(package_dir, tmp_path / "mpool", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental", "-p", "mpool"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
