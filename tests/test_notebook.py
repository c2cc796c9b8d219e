"""launch/colab.ipynb runs top to bottom (nbclient, a real Python kernel) on the CPU demo config
with tiny budgets put in its parameters cell, and ends with the evaluation's report on disk."""

import json
import os

import pytest

nbclient = pytest.importorskip("nbclient", reason="the [test] extra installs nbclient")
import nbformat  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab.ipynb")


def _parameters(workdir) -> str:
    overrides = {
        "eval.attacks": "clean,pgd",
        "eval.pgd.steps": (3,),
        "eval.pgd.long_examples": 0,
        "eval.eval_keys": 2,
        "eval.sanity.examples": 0,
        "batch_size": 64,
        "eval_batch_size": 64,
    }
    return "\n".join([
        'REPO_URL = ""', 'CONFIG = "configs/mnist_demo.py"', f"WORKDIR = {str(workdir)!r}",
        'DATA_DIR = ""', "STEPS = 8", "EVAL_EXAMPLES = 32", f"OVERRIDES = {overrides!r}",
        "INSTALL = False", "MOUNT_DRIVE = False",
    ])  # fmt: skip


def test_notebook_runs_top_to_bottom(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is nb.cells[1], "the parameters cell comes first"
    params[0].source = _parameters(tmp_path / "run")
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": REPO}}
    )
    client.execute()
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "clean accuracy" in text and "headline robust accuracy" in text
    with open(tmp_path / "run" / "results.json") as f:
        results = json.load(f)
    assert results["headline"]["n"] == 32
    assert (tmp_path / "run" / "rows.png").stat().st_size > 0
    # The report was displayed: the last cell's output holds the Markdown and the PNG.
    last = nb.cells[-1].outputs
    assert any("text/markdown" in o.get("data", {}) for o in last)
    assert any("image/png" in o.get("data", {}) for o in last)
