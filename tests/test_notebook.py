"""The notebook API in a real Jupyter kernel (nbclient + ipykernel): help shows every option,
and a training run shows its progress within an epoch."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent


def test_train_model_in_a_jupyter_kernel_shows_help_and_progress(tmp_path: Path) -> None:
    run_dir = tmp_path / "nb-run"
    cells = [
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\nimport cvae\nhelp(cvae.train_model)",
        f"result = cvae.train_model(arch='mlp', latent_dim=2, epochs=1, batch_size=32, train_subset=640, "
        f"test_subset=64, latent_subset=16, threads=1, run_dir={str(run_dir)!r})\n"
        "print('state', result.state, len(result.metrics))",
        "from cvae.train import main\nprint(main is not None, callable(cvae.train_model))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    def text(cell: dict) -> str:
        return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell["outputs"])

    help_text, train_text, alias_text = (text(c) for c in notebook.cells)
    assert "train_model(*, dataset='MNIST'" in help_text and "latent_dim=10" in help_text
    assert "learning_rate = 0.0003" in help_text  # each option with its help, from cvae.config
    # Progress within the epoch: tqdm.auto draws in the notebook (20 batches), then the epoch's line.
    assert "epoch 1" in train_text and "20/20" in train_text, train_text[-2000:]
    assert "state finished 1" in train_text
    assert "True True" in alias_text
