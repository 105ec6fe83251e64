"""Slide-ready figures (cvae.figures, `cvae export`): size, caption, text kept as text, the animation's frames,
the one-line errors, the training command rebuilt from a run's config, and the classes' colours and markers."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvae import figures
from cvae.__main__ import main as cvae_main
from cvae.runs import RunDir

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared tiny run (2 epochs, z=2, 200 latent points), named, so figures can be written."""
    folder = tmp_path_factory.mktemp("slides") / "tiny"
    shutil.copytree(tiny_run, folder)
    (folder / "meta.json").write_text('{"name": "my lecture run", "note": ""}')
    return folder


def _texts(svg: bytes) -> list[str]:
    """Every <text> element's words, as a browser (or a search) reads them."""
    root = ET.fromstring(svg)
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def _exit_code(argv: list[str]) -> int:
    """`cvae ...`'s exit code, whether the command returns it or its parser exits (a flag it refuses)."""
    try:
        return cvae_main(argv)
    except SystemExit as stop:
        return stop.code


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.mark.parametrize("what", ["curves", "latent", "recon", "generate"])
def test_a_slide_is_1280x720_png_and_svg_with_its_caption_as_text(run: Path, what: str) -> None:
    made = figures.export(run, figures.Export(what), where="checkpoints/tiny")
    assert set(made) == {"png", "svg"}
    with Image.open(io.BytesIO(made["png"])) as png:
        assert png.format == "PNG" and png.size == (1280, 720)
    root = ET.fromstring(made["svg"])
    # 960 x 540 pt is 1280 x 720 CSS px: the same page in a browser.
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("960pt", "540pt", "0 0 960 540")
    texts = _texts(made["svg"])
    caption = " ".join(" ".join(texts).split())  # long commands wrap onto indented lines
    epoch = "epochs 1–2" if what == "curves" else "epoch 2"
    head = next(t for t in texts if t.startswith("run "))
    assert "my lecture run" in head and "(tiny)" in head and epoch in head and "seed 0" in head
    assert f"$ cvae export checkpoints/tiny --what {what} --epoch 2" in caption
    train = caption[caption.index("$ cvae train") : caption.index("$ cvae export")]
    assert "--latent_dim 2" in train and train.strip().endswith("--run-dir checkpoints/tiny")
    # No text under 16 px: 12 of the SVG's units (points) are 16 CSS px.
    sizes = [float(s) for s in re.findall(r"font-size: ([\d.]+)px", made["svg"].decode())]
    assert sizes and min(sizes) >= 12


def test_the_latent_animation_is_a_gif_with_a_frame_an_epoch(run: Path) -> None:
    made = figures.export(run, figures.Export("animation"))
    assert set(made) == {"gif"}
    epochs = RunDir(run).epochs_with("latent.npy")
    with Image.open(io.BytesIO(made["gif"])) as gif:
        assert gif.format == "GIF" and gif.size == (1280, 720) and gif.n_frames == len(epochs) == 2
        gif.seek(0)
        first = gif.convert("RGB").tobytes()
        gif.seek(gif.n_frames - 1)
        assert gif.convert("RGB").tobytes() != first  # the points move from epoch to epoch
    made = figures.export(run, figures.Export("animation", epoch=1))
    with Image.open(io.BytesIO(made["gif"])) as gif:
        assert gif.n_frames == 1


def test_one_class_generates_one_big_grid_with_its_options_in_the_command(run: Path) -> None:
    request = figures.Export("generate", label=3, mode="random", seed=5)
    made = figures.export(run, request, ("svg",), where="r")
    caption = " ".join(" ".join(_texts(made["svg"])).split())
    assert "$ cvae export r --what generate --epoch 2 --mode random --label 3 --seed 5" in caption
    assert "class 3" in caption and "400 random codes" in caption


def test_the_command_line_writes_the_files_it_prints(run: Path, tmp_path: Path, capsys) -> None:
    assert cvae_main(["export", str(run), "--what", "recon", "--kind", "sample", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "tiny_recon_sample_e2.png"), str(tmp_path / "tiny_recon_sample_e2.svg")]
    assert Image.open(printed[0]).size == (1280, 720)
    assert "--kind sample" in "\n".join(_texts(Path(printed[1]).read_bytes()))
    assert cvae_main(["export", str(run), "--what", "latent", "--format", "svg", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "tiny_latent_e2.svg")]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["{missing}", "--what", "curves"], "no run folder at"),
        (["{empty}", "--what", "curves"], "not a run folder"),
        (["{run}", "--what", "latent", "--epoch", "9"], "epoch 9: this run has latent codes for epochs 1, 2"),
        (["{run}", "--what", "recon", "--epoch", "0"], "--epoch"),
        (["{run}", "--what", "slides"], "invalid choice: 'slides'"),
        (["{run}", "--what", "latent", "--format", "gif"], "latent comes as png or svg, not gif"),
        (["{run}", "--what", "animation", "--format", "png"], "animation comes as gif, not png"),
        (["{run}", "--what", "curves", "--format", "pdf"], "--format must be"),
        (["{run}", "--what", "generate", "--label", "10"], "--label must be a class from 0 to 9"),
        (["{run}", "--what", "generate", "--n", "x"], "--n"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_leaves_the_run_alone(run: Path, tmp_path: Path, capsys, args: list[str],
                                                                  words: str) -> None:  # fmt: skip
    (tmp_path / "empty").mkdir()
    before = _files(run)
    names = {"run": str(run), "missing": str(tmp_path / "nope"), "empty": str(tmp_path / "empty")}
    assert _exit_code(["export", *[a.format(**names) for a in args]]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(run) == before


def _options_of(command: str) -> dict:
    """Every option's value for a `cvae train ...` command, read by the training command line itself."""
    from cvae.cli import OneLineParser, add_options, given
    from cvae.training import resolve_options

    parser = OneLineParser(add_help=False)
    add_options(parser)
    return resolve_options({k: v for k, v in given(parser.parse_args(shlex.split(command)[2:])).items()
                            if k != "run_dir"})  # fmt: skip


def _same_config(opts: dict, config) -> bool:
    from cvae.config import OPTIONS

    return all(opts[o.name] == getattr(getattr(config, o.section), o.field) for o in OPTIONS
               if o.section != "launch" and o.name != "binarize")  # fmt: skip


def test_the_training_command_remakes_the_runs_config(run: Path) -> None:
    (command,) = figures.train_commands(RunDir(run).read_config(), "checkpoints/tiny")
    opts = _options_of(command)
    saved = figures.open_run(run).config
    assert _same_config(opts, saved) and opts["binarize"] in ("auto", saved.data.binarize)


def test_a_quick_demo_reads_as_one_and_a_resume_as_a_second_command() -> None:
    from cvae.data import DatasetInfo
    from cvae.training import build_config, resolve_options

    info = DatasetInfo(name="MNIST", channels=1, height=28, width=28, class_names=tuple(map(str, range(10))))
    config = build_config(resolve_options({"quick_demo": True, "threads": 1, "latent_dim": 3}), info)
    raw = {**config.to_dict(), "history": [{"start_epoch": 0}, {"start_epoch": 12}]}
    raw["train"]["epochs"] = 5  # the resume's --epochs
    first, resumed = figures.train_commands(raw, "runs/a b")
    assert first == "cvae train --quick-demo --latent_dim 3 --threads 1 --run-dir 'runs/a b'"
    assert resumed == "cvae train --resume_path 'runs/a b' --epochs 5"
    assert _same_config({**_options_of(first), "epochs": 12}, replace(config, train=replace(config.train, epochs=12)))


def test_ten_classes_get_ten_colours_and_ten_markers_everywhere() -> None:
    from ui.plots import class_colors, latent_animation

    styles = figures.class_styles(10)
    assert len({s.color for s in styles}) == 10
    assert len({s.symbol for s in styles}) == 10 and len({s.marker for s in styles}) == 10
    assert len(set(figures.class_styles(100))) == 100  # more classes: still a pair of their own each
    assert class_colors(10) == [s.color for s in styles]
    rng = np.random.default_rng(0)
    z, labels = rng.normal(size=(2, 300, 2)), np.arange(300) % 10
    fig, _ = latent_animation([1, 2], z, labels, [str(k) for k in range(10)])
    assert [(t.marker.color, t.marker.symbol) for t in fig.data] == [(s.color, s.symbol) for s in styles]


def test_the_latent_slide_draws_a_marker_shape_per_class(run: Path) -> None:
    root = ET.fromstring(figures.export(run, figures.Export("latent"), ("svg",))["svg"])
    plot = next(g for g in root.iter(f"{SVG}g") if g.get("id") == "axes_1")  # the scatter, not the legend
    points = [g for g in plot.iter(f"{SVG}g") if g.get("id", "").startswith("PathCollection")]
    used = {u.get("{http://www.w3.org/1999/xlink}href") for g in points for u in g.iter(f"{SVG}use")}
    shapes = {p.get("d") for p in root.iter(f"{SVG}path") if f"#{p.get('id')}" in used}
    assert len(points) == 10
    assert len(set(np.load(RunDir(run).artifacts / "latent_labels.npy").tolist())) == 10
    assert len(shapes) == 10


# ------------------------------------------------------------------ the app's "For slides" buttons


@pytest.fixture()
def app_runs(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "tiny")
    monkeypatch.setenv("CVAE_RUNS_DIR", str(root))
    return root


SLIDES = {  # page -> the keys of its slide downloads (ui.slides: <key>_<figure>_<format>)
    "app_pages/train.py": ["train_slides_0_png", "train_slides_0_svg"],
    "app_pages/latent.py": ["latent_slides_0_png", "latent_slides_0_svg", "latent_slides_1_gif"],
    "app_pages/reconstructions.py": ["recon_slides_0_png", "recon_slides_0_svg"],
    "app_pages/generate.py": ["gen_slides_uniform_0_png", "gen_slides_uniform_0_svg", "gen_slides_random_0_png",
                              "gen_slides_random_0_svg"],
}  # fmt: skip


@pytest.mark.parametrize("page", list(SLIDES))
def test_every_page_with_a_chart_or_grid_offers_it_for_slides(app_runs: Path, page: str) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"), default_timeout=60)
    at.query_params["run"] = "tiny"
    at.run()
    if page != "app_pages/train.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    buttons = {e.key: e for e in at.main if type(e).__name__ == "DownloadButton" and "slides" in (e.key or "")}
    assert sorted(buttons) == sorted(SLIDES[page])
    assert {b.label for b in buttons.values()} <= {"PNG", "SVG", "GIF"}
    commands = [c.value for c in at.caption if "cvae export" in str(c.value)]
    assert commands and all("--epoch 2" in c for c in commands)


@pytest.mark.e2e
def test_a_click_downloads_the_slide_in_a_browser(tiny_run: Path, tmp_path: Path, app_server) -> None:
    """In Chromium at 1280x720: the Latent space page's popover gives a 1280x720 PNG, an SVG holding its caption,
    and the animation as a GIF, each drawn on the click."""
    from playwright.sync_api import sync_playwright

    shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")
    with app_server(tmp_path) as url, sync_playwright() as p:
        chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 720}, accept_downloads=True)
        page.goto(f"{url}/latent?run=tiny")
        page.get_by_role("button", name="For slides").click(timeout=90_000)
        got = {}
        for label in ("PNG", "SVG", "GIF"):
            with page.expect_download(timeout=120_000) as download:
                page.get_by_test_id("stPopoverBody").get_by_role("button", name=label).click()
            got[label] = Path(download.value.path()).read_bytes()
            assert download.value.suggested_filename.startswith("tiny_")
        browser.close()
    assert Image.open(io.BytesIO(got["PNG"])).size == (1280, 720)
    assert "--what latent --epoch 2" in " ".join(_texts(got["SVG"]))
    with Image.open(io.BytesIO(got["GIF"])) as gif:
        assert gif.n_frames == 2 and gif.size == (1280, 720)


def test_the_plots_module_leaves_pandas_whole_before_any_figure_is_built() -> None:
    """plotly's validators take pandas from sys.modules as it stands: a page that built a figure while another
    thread of the server was importing pandas failed on a half-initialised module. Importing ui.plots
    imports pandas whole first (an import waits for another thread's import of the same module)."""
    import subprocess
    import sys

    code = ("import sys; assert 'pandas' not in sys.modules; import ui.plots; "
            "p = sys.modules['pandas']; assert hasattr(p, 'Series') and hasattr(p, 'Index'); print('whole')")  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "whole", proc.stderr[-1000:]
