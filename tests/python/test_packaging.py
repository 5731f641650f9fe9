"""The installed package: imports on its own, ships its type information."""

from __future__ import annotations

import subprocess
import sys


def test_import_mpool_does_not_need_import_torch_first():
    code = "import sys, mpool; assert 'torch' not in sys.modules, 'torch was imported'; print(mpool.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"
