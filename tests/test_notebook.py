"""The notebook API in a real Jupyter kernel (nbclient + ipykernel), in a folder outside the checkout, with
the installed package: help shows every option, a training run shows its progress within an epoch (a
widget, without warnings), and one call loads the trained model to draw a class's grid."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parent.parent


def test_train_model_in_a_jupyter_kernel_shows_help_and_progress(tmp_path: Path) -> None:
    run_dir = tmp_path / "nb-run"
    cells = [
        "import cvae\nhelp(cvae.train_model)\nprint(cvae.__file__)",
        f"result = cvae.train_model(arch='mlp', latent_dim=2, epochs=1, batch_size=32, train_subset=640, "
        f"test_subset=64, latent_subset=16, threads=1, run_dir={str(run_dir)!r})\n"
        "print('state', result.state, len(result.metrics))",
        "from cvae.train import main\nprint(main is not None, callable(cvae.train_model))",
        "model = cvae.load_model(result.run_dir)\ngrid = cvae.generate_images(model, label=3, mode='uniform', n=4)\n"
        "print('grid', tuple(grid.shape), model.info.class_names[3], result.model is not None)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    def text(cell: dict) -> str:
        return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell["outputs"])

    help_text, train_text, alias_text, grid_text = (text(c) for c in notebook.cells)
    assert "train_model(*, dataset='MNIST'" in help_text and "latent_dim=10" in help_text
    assert "learning_rate = 0.0003" in help_text  # each option with its help, from cvae.config
    assert str(ROOT) not in str(tmp_path) and "cvae" in help_text  # imported by name, from another folder
    # Progress within the epoch: tqdm.auto draws a Jupyter widget (20 batches), then the epoch's line.
    widgets = [o for o in notebook.cells[1]["outputs"] if "application/vnd.jupyter.widget-view+json" in
               o.get("data", {})]  # fmt: skip
    assert widgets and "/20" in str(widgets[0]["data"].get("text/plain", "")), train_text[-2000:]
    assert "epoch 1" in train_text and "state finished 1" in train_text
    warnings = [o.get("text", "") for cell in notebook.cells for o in cell["outputs"] if o.get("name") == "stderr"]
    assert not any("Warning" in w or "IProgress" in w for w in warnings), warnings
    assert "True True" in alias_text
    assert "grid (16, 1, 28, 28) 3 True" in grid_text
