"""The README's Python snippets run as written (imports included, every name defined), in the core
install the README's `make demo` creates (no optional extra)."""
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(README, encoding="utf-8").read(), flags=re.S)


# the snippets run in the core install that `make demo` creates: without the [sinkhorn] extra's packages
CORE_INSTALL = 'import sys\nsys.modules["geomloss"] = sys.modules["pykeops"] = None  # import fails, as if absent\n'


def _run(code, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", CORE_INSTALL + code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=900)


def test_readme_has_the_quick_start_and_register_loss_snippets():
    assert any("ddm.Distiller(" in b and "ddm.evaluate(" in b for b in BLOCKS)
    assert any("@ddm.register_loss(" in b for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, tmp_path):
    res = _run(BLOCKS[index], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    if "ddm.evaluate(" in BLOCKS[index]:
        # the quick start's cut budgets still distil one useful image per class (chance is 10 %)
        acc = float(re.search(r"accuracy \(%\)\s+([\d.]+)", res.stdout).group(1))
        assert acc >= 70.0, res.stdout
        assert "SyntheticSet(10 images of 1x8x8, 10 classes" in res.stdout
    if "@ddm.register_loss(" in BLOCKS[index]:
        assert re.search(r"tensor\([\d.]+\)", res.stdout)
