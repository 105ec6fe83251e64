"""Configs validate every value and round-trip through JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cvae.errors import ConfigError


def run_config(**train) -> RunConfig:
    model = ModelConfig(channels=1, height=28, width=28, num_classes=10, latent_dim=2)
    return RunConfig(data=DataConfig(binarize="static"), model=model, train=TrainConfig(**train))


def test_json_round_trip() -> None:
    cfg = run_config(epochs=3).validate()
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "train",
    [dict(epochs=0), dict(batch_size=-1), dict(learning_rate=float("nan")), dict(learning_rate=0.0),
     dict(learning_rate=float("inf")), dict(epochs=10**9), dict(precision="fp8"), dict(device="tpu")],
)  # fmt: skip
def test_bad_training_values_are_refused(train: dict) -> None:
    with pytest.raises(ConfigError):
        run_config(**train).validate()


def test_unknown_keys_are_refused() -> None:
    raw = run_config().to_dict()
    raw["model"]["evil"] = 1
    with pytest.raises(ConfigError, match="evil"):
        RunConfig.from_dict(raw)


def test_bernoulli_needs_binarized_data() -> None:
    model = ModelConfig(channels=1, height=28, width=28, num_classes=10)
    with pytest.raises(ConfigError, match="binarized"):
        RunConfig(data=DataConfig(binarize="none"), model=model).validate()


# ------------------------------------------------- one source of truth for every option


def _parser_actions() -> dict[str, object]:
    from cvae.train import build_parser

    return {a.dest: a for a in build_parser()._actions if a.dest != "help"}


def test_every_option_is_one_flag_with_its_default_once_in_help() -> None:
    from cvae.config import OPTIONS

    actions = _parser_actions()
    assert set(actions) == {o.name for o in OPTIONS}
    for opt in OPTIONS:
        action = actions[opt.name]
        assert list(action.option_strings) == opt.flags
        assert action.default is None  # "not given": the config's default applies, declared once
        assert action.help.count("[") <= 1 and action.help.startswith(opt.help)


def test_help_prints_each_default_once() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cvae.train", "--help"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "(default:" not in out
    assert out.index("the reference's options") < out.index("more options")
    assert out.count("--latent_dim") == 2  # in the usage line and once in its group


def test_every_run_option_round_trips_through_json_and_the_notebook_signature() -> None:
    import inspect
    import json

    import cvae
    from cvae.config import OPTIONS
    from cvae.data import builtin_info
    from cvae.training import build_config, resolve_options

    config = build_config(resolve_options({}), builtin_info("MNIST"))
    raw = json.loads(json.dumps(config.to_dict()))
    signature = inspect.signature(cvae.train_model)
    for opt in OPTIONS:
        assert signature.parameters[opt.name].default == opt.default
        assert opt.name in cvae.train_model.__doc__
        if opt.section != "launch":
            assert opt.field in raw[opt.section]
    assert RunConfig.from_dict(raw) == config


def test_every_value_is_checked_once_with_one_wording() -> None:
    from cvae.config import OPTIONS

    for opt in OPTIONS:
        if opt.high is not None:
            with pytest.raises(ConfigError, match=f"^{opt.name} must be "):
                opt.check(opt.high * 2 + 1)
        if opt.low is not None:
            with pytest.raises(ConfigError, match=f"^{opt.name} must be "):
                opt.check(opt.low - 1)
        if opt.default is not None:
            assert opt.check(opt.default) == opt.default


def test_the_form_offers_every_option_with_the_command_lines_defaults_and_limits(tmp_path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    from cvae.config import OPTIONS
    from ui.train_form import SHOWN

    monkeypatch.setenv("CVAE_RUNS_DIR", str(tmp_path))
    app = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
    at = AppTest.from_file(app, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    widgets = {w.key: w for kind in ("selectbox", "radio", "number_input", "checkbox", "text_input")
               for w in getattr(at, kind)}  # fmt: skip
    in_form = [o for o in OPTIONS if o.form]
    assert in_form and all(o.section != "launch" for o in in_form)
    for opt in in_form:
        widget = widgets[f"f_{opt.name}"]
        assert widget.value == opt.default, opt.name
        if hasattr(widget, "min_value") and opt.low is not None and not opt.low_open:
            assert widget.min_value == opt.low and widget.max_value == opt.high, opt.name
        if opt.choices:  # as the command line spells them, or in words where the form says more (ui SHOWN)
            shown = SHOWN.get(opt.name) or dict(zip(opt.choices, opt.user_choices(), strict=True))
            assert list(widget.options) == [shown[c] for c in opt.choices], opt.name
