"""The public training entry point: `cvae.train_model(...)`, options in, a trained run out.

    import cvae
    result = cvae.train_model(dataset="MNIST", latent_dim=2, epochs=1)

It takes the options declared once in cvae.config (the reference's names
first), turns them into a validated `RunConfig`, applies the resume rules,
prepares the run folder and hands over to `cvae.loop.fit`. The command line
(`python -m cvae.train`, in cvae/train.py) calls it with the same options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cvae.checkpoints import load_checkpoint, validate_checkpoint
from cvae.config import (
    BY_NAME,
    COMPLETION,
    DEFAULTS,
    OPTIONS,
    QUICK_DEMO,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    conv_preset,
)
from cvae.data import DatasetInfo, ImageData, load_data, peek_info
from cvae.distributed import broadcast, check_batch, process_group, together
from cvae.errors import ConfigError, CVAEError
from cvae.loop import TrainResult, fit
from cvae.progress import ConsoleProgress
from cvae.ranks import Ranks, launched
from cvae.runs import (
    RunDir,
    RunLock,
    default_runs_root,
    fresh_run_path,
    new_run_id,
    read_jsonl,
    write_atomic,
    write_json,
)
from cvae.runtime import flush_denormals

__all__ = ["TrainResult", "build_config", "resolve_options", "train_model"]


def train_model(**options: Any) -> TrainResult:
    # The signature and docstring are generated from cvae.config's options below.
    flush_denormals()  # before any parallel op, so torch's worker threads inherit it
    ranks = launched()  # one of several processes that torchrun (or srun) started to train one run together?
    opts = resolve_options(options)
    given_names = set(options) - {"quiet", "overwrite"}
    with contextlib.ExitStack() as held:
        held.enter_context(process_group(ranks))  # joined with the others for the whole run; nothing for one process
        # Rank 0 alone locks, checks and prepares the run folder; then the others read the run it prepared. An
        # error on any rank ends them all, and rank 0 says it.
        with together(ranks):
            prepared = _prepare_run(opts, given_names, held, ranks) if ranks.main else None
        path = broadcast(str(prepared.run.path) if prepared else None, ranks)
        with together(ranks):
            if prepared is None:
                run = RunDir(Path(path))
                prepared = _Prepared(run, None, *_follow_run(opts, given_names, run))
        run, lock, config, data = prepared.run, prepared.lock, prepared.config, prepared.data
        batches = max(1, math.ceil(len(data.train_x) / min(config.train.batch_size, len(data.train_x))))
        progress = ConsoleProgress(batches, quiet=opts["quiet"] or not ranks.main)
        try:
            return fit(config, run, data=data, resume=prepared.resume, callbacks=[progress], quiet=opts["quiet"])
        except OSError:
            if lock is None or lock.still_here():
                raise
            raise CVAEError(f"the run folder {run.path} was moved or deleted while it trained: stopped, and nothing "
                            "was written in its place (its files are where it went: resume it there)") from None  # fmt: skip


@dataclass
class _Prepared:
    """A run folder ready to train into, and what trains there."""

    run: RunDir
    lock: RunLock | None  # rank 0's (or the one process's) hold on it; the other ranks hold none
    config: RunConfig
    data: ImageData
    resume: dict | None


def _prepare_run(opts: dict[str, Any], given_names: set[str], held: contextlib.ExitStack, ranks: Ranks) -> _Prepared:
    """The run folder locked (for `held`'s life), checked and prepared: its config written, and on resume the
    records of epochs the checkpoint does not have dropped."""
    checkpoint_path: Path | None = None
    if opts["resume_path"]:
        checkpoint_path, source = _resume_target(Path(opts["resume_path"]))
        run = RunDir(Path(opts["run_dir"])) if opts["run_dir"] else source
    else:
        if opts["resume_epoch"] not in (None, 0):
            raise ConfigError("--resume_epoch needs --resume_path")
        data_config = section_config(DataConfig, opts)
        config = build_config(
            opts, peek_info(data_config)
        )  # refuse a misfit from the headers: nothing decoded or cached
        check_batch(config.train.batch_size, ranks)  # nor a batch that the ranks cannot share equally
        run = RunDir(Path(opts["run_dir"])) if opts["run_dir"] else None
    # One writer per run folder for the trainer's whole life (the kernel drops the lock if we die), taken
    # before the checkpoint and config a resume writes from are read: a second trainer is refused, and
    # never trains on from what the first has since replaced.
    lock = held.enter_context(run.lock()) if run is not None else None
    if checkpoint_path is not None:
        config, data, resume = _resume(opts, checkpoint_path, run, given_names=given_names)
        check_batch(config.train.batch_size, ranks)
    else:
        data = load_data(data_config)
        config, resume = build_config(opts, data.info), None
    if run is None:
        root = Path(opts["runs_root"]) if opts["runs_root"] else default_runs_root()
        m = config.model
        kind = m.likelihood if m.condition == "label" else \
            f"{m.condition}{m.quadrants if m.condition == 'quadrants' else ''}"  # fmt: skip
        run = fresh_run_path(root, new_run_id(config.data.dataset, kind, m.latent_dim))
        lock = held.enter_context(run.lock())
    # A folder of runs (the runs root, or one whose checkpoints/ is a runs root) is never a new run's: its
    # files would land among other people's runs, and an overwrite would clear them.
    why = run.not_one_run() if resume is None else None
    if why:
        verb = "overwrite" if opts["overwrite"] else "train into"
        raise CVAEError(f"refusing to {verb} {run.path}: {why}; pick a --run-dir of its own")
    if resume is None and run.holds_run():
        if not opts["overwrite"]:
            raise CVAEError(f"{run.path} already holds a run: continue it with python -m cvae.train -rp {run.path} "
                            "-e N, or pass --overwrite to replace it")  # fmt: skip
        run.clear_run()
    start_epoch = int(resume["epoch"]) if resume else 0
    prepare_run_folder(run, config, data.info, resume, start_epoch)
    if not opts["quiet"]:
        print(_describe(run, config, data, start_epoch if resume else None), flush=True)
    return _Prepared(run, lock, config, data, resume)


def _follow_run(opts: dict[str, Any], given_names: set[str], run: RunDir) -> tuple[RunConfig, ImageData, dict | None]:
    """A launch's other rank: the config, data and checkpoint of the run that rank 0 prepared in `run`, read
    as rank 0 read them (it holds the lock, so nothing changes them meanwhile)."""
    if opts["resume_path"]:
        checkpoint_path, _ = _resume_target(Path(opts["resume_path"]))
        return _resume(opts, checkpoint_path, run, given_names=given_names)
    data = load_data(section_config(DataConfig, opts))
    return build_config(opts, data.info), data, None


def _signature_and_doc() -> tuple[inspect.Signature, str]:
    params = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default) for o in OPTIONS]
    lines = ["Train a conditional VAE into a run folder and return a TrainResult (run_dir, metrics, state).", "",
             "Every option is keyword-only; the same options are the flags of `python -m cvae.train`:", ""]  # fmt: skip
    for o in OPTIONS:
        lines.append(
            f"    {o.name} = {o.default!r}: {o.help}" + (f" ({o.describe()})" if o.kind is not str or o.choices else "")
        )
    return inspect.Signature(params, return_annotation=TrainResult), "\n".join(lines)


train_model.__signature__, train_model.__doc__ = _signature_and_doc()  # type: ignore[attr-defined]


# ------------------------------------------------------------ options -> config


def resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """Every option's value: the defaults, the quick-demo preset if asked, then what was given (checked)."""
    unknown = sorted(set(options) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    chosen = {k: BY_NAME[k].check(v) for k, v in options.items() if v is not None}
    preset = {**(QUICK_DEMO if chosen.get("quick_demo") else {}),
              **(COMPLETION if chosen.get("condition") == "quadrants" else {})}  # fmt: skip
    if chosen.get("condition") == "quadrants" and chosen.get("quadrants") == 0:
        preset["mask_channel"] = True  # a random count needs the mask (ModelConfig.validate says why)
    return {**DEFAULTS, **preset, **chosen}


def section_config(cls: type, opts: dict[str, Any], **extra: Any) -> Any:
    """One section of the run's config (DataConfig, ModelConfig or TrainConfig) from resolved options."""
    section = {DataConfig: "data", ModelConfig: "model", TrainConfig: "train"}[cls]
    values = {o.field: opts[o.name] for o in OPTIONS if o.section == section}
    if cls is DataConfig and values["binarize"] == "auto":
        values["binarize"] = "static" if opts["decoder_type"] == "bernoulli" else "none"
    return cls(**values, **extra)


def planned_sections(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The data, model and train sections a run's config.json will hold, from the options it was queued with,
    before it has written them: all but the model's fields that come from the data (its shapes, the conv
    layers' sizes). JSON's own types (lists for tuples), so they compare with a config.json's. Raises
    CVAEError, TypeError or ValueError for options that do not resolve."""
    opts = resolve_options(options)
    sections = {"data": dataclasses.asdict(section_config(DataConfig, opts)),
                "model": {o.field: opts[o.name] for o in OPTIONS if o.section == "model"},
                "train": dataclasses.asdict(section_config(TrainConfig, opts))}  # fmt: skip
    return json.loads(json.dumps(sections))


def _model_config(opts: dict[str, Any], info: DatasetInfo) -> ModelConfig:
    shapes = dict(channels=info.channels, height=info.height, width=info.width, num_classes=info.num_classes)
    conv = conv_preset(info.height, info.width) if opts["arch"] == "conv" else {}
    return section_config(ModelConfig, opts, **shapes, **conv)


def build_config(opts: dict[str, Any], info: DatasetInfo) -> RunConfig:
    """A validated RunConfig from resolved options (`resolve_options`) and the data's shapes."""
    return RunConfig(data=section_config(DataConfig, opts), model=_model_config(opts, info),
                     train=section_config(TrainConfig, opts)).validate()  # fmt: skip


# -------------------------------------------------------------------- resuming


def _resume_target(resume_path: Path) -> tuple[Path, RunDir | None]:
    """(checkpoint file, run folder it belongs to or None)."""
    if resume_path.is_dir():
        run = RunDir(resume_path)
        if not run.latest_checkpoint.is_file():
            raise CVAEError(f"no checkpoint in run folder {resume_path} (expected checkpoints/latest.pt)")
        return run.latest_checkpoint, run
    if resume_path.parent.name == "checkpoints" and (resume_path.parent.parent / "config.json").is_file():
        return resume_path, RunDir(resume_path.parent.parent)
    return resume_path, None


def _resume(opts: dict[str, Any], checkpoint_path: Path, target: RunDir | None,
            given_names: set[str]) -> tuple[RunConfig, Any, dict]:  # fmt: skip
    """The checkpoint's config with what may change on resume (the options marked resume="override")."""
    # Every field is checked before use; resuming into a folder that holds a run must be that run.
    expect = target.read_config() if target else None
    if target is not None and expect is None and target.config_path.exists():
        raise CVAEError(f"{target.config_path} is unreadable (corrupt, too large or too deeply nested): this run "
                        "cannot be checked against its checkpoint; resume into a new --run-dir")  # fmt: skip
    resume = validate_checkpoint(load_checkpoint(checkpoint_path), expect_config=expect)
    saved = RunConfig.from_dict(resume["config"])
    epoch = int(resume.get("epoch", -1))
    if opts["resume_epoch"] is not None and opts["resume_epoch"] != epoch:
        raise ConfigError(f"--resume_epoch {opts['resume_epoch']} does not match the checkpoint's epoch {epoch}")
    sections = {"data": saved.data, "model": saved.model, "train": saved.train}
    changes: dict[str, Any] = {"epochs": opts["epochs"]}  # epochs: how many more (the default too)
    for o in OPTIONS:
        if o.name not in given_names or o.section == "launch":
            continue
        old = getattr(sections[o.section], o.field)
        if o.resume == "override":
            changes[o.field] = opts[o.name]
        elif not (opts[o.name] == old or o.name == "binarize" and opts[o.name] == "auto"
                  or isinstance(old, str) and str(opts[o.name]).lower() == old.lower()):  # fmt: skip
            raise ConfigError(f"the checkpoint was trained with {o.name}={old}; drop that option or start a new run")
    config = replace(saved, train=replace(saved.train, **changes)).validate()
    if "learning_rate" in given_names:
        resume["lr_override"] = opts["learning_rate"]
    data = load_data(config.data)
    if data.info.to_dict() != resume.get("dataset_info", data.info.to_dict()):
        raise CVAEError("the checkpoint was trained on data of another shape or classes")
    return config, data, resume


def prepare_run_folder(run: RunDir, config: RunConfig, info: DatasetInfo, resume: dict | None, start: int) -> None:
    """Write config.json; on resume, drop records of epochs the checkpoint does not have."""
    previous = run.read_config() or {}
    history = previous.get("history", [])
    history.append({"time": time.time(), "argv": sys.argv[1:], "start_epoch": start})
    write_json(run.config_path, {**config.to_dict(), "dataset_info": info.to_dict(),
                                 "created": previous.get("created", time.time()), "history": history})  # fmt: skip
    if resume is None:
        for path in (run.metrics_path, run.batches_path):
            path.unlink(missing_ok=True)
        return
    metrics = [r for r in read_jsonl(run.metrics_path) if 0 < r.get("epoch", 0) <= start]
    if not any(r["epoch"] == start for r in metrics) and isinstance(resume.get("metrics"), dict):
        metrics.append(resume["metrics"])  # killed between the checkpoint and the metrics line
    write_atomic(run.metrics_path, "".join(json.dumps(r) + "\n" for r in metrics).encode())
    batches = [r for r in read_jsonl(run.batches_path) if 0 < r.get("epoch", 0) <= start]
    write_atomic(run.batches_path, "".join(json.dumps(r) + "\n" for r in batches).encode())


def _describe(run: RunDir, config: RunConfig, data: Any, resumed_after: int | None) -> str:
    m, info = config.model, data.info
    model = f"{m.arch} {m.likelihood}{' (learned sigma)' if m.learn_sigma else ''}"
    return (f"run {run.path}  |  {info.name} {info.channels}x{info.height}x{info.width}, {len(data.train_x)} train / "
            f"{len(data.test_x)} test  |  {model}, z={m.latent_dim}"
            + (f"  |  resuming after epoch {resumed_after}" if resumed_after is not None else ""))  # fmt: skip
