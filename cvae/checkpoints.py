"""Checkpoints: saving, loading weights-only, and checking every field before anything uses it.

A checkpoint is plain data and tensors (see docs/run-folder.md):

    format_version  int, FORMAT_VERSION
    config          RunConfig.to_dict()
    dataset_info    DatasetInfo.to_dict()
    epoch           int >= 0, epochs trained
    model           the CVAE's state_dict
    optimizer       Adam's state_dict
    scheduler       ReduceLROnPlateau's state_dict
    metrics         the last epoch's metrics record (numbers)
    rng_cpu         torch.get_rng_state(), uint8 (5056,)
    rng_cuda        torch.cuda.get_rng_state(), uint8, when trained on a GPU

`torch.load(..., weights_only=True)` makes loading safe (no code runs), not
the values sane: an Adam moment of the wrong shape makes the fused kernel read
past its buffer (a segmentation fault), a float RNG state or a string epoch a
traceback, a config claiming 10^12 parameters an allocation of gigabytes.
`validate_checkpoint` checks each field against the model its config builds
on PyTorch's "meta" device (shapes only, no memory) and says which field is
wrong, in one line.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvae.config import RunConfig
from cvae.data import DatasetInfo
from cvae.errors import CheckpointError, CVAEError
from cvae.legacy import upgrade_checkpoint
from cvae.model import CVAE
from cvae.runs import MAX_NUMBER_LIST, RunDir, write_atomic
from cvae.runtime import import_dynamo_when_needed

FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 2 << 30  # refuse anything larger than 2 GiB before reading it
MAX_PARAMETERS = 200_000_000  # 800 MB of float32 weights: far above any cvae model
MAX_EPOCH = 10_000_000  # a resumed run adds at most 100000 epochs at a time
MAX_ADAM_STEP = 1e15  # Adam's bias correction is exactly 1 long before this
MAX_RNG_STATE_BYTES = 1 << 20  # a generator state we cannot try here (CUDA on a CPU machine) is at most this
# The trainer's Adam never sets these; True would make the fused kernel refuse to step, or
# need state (max_exp_avg_sq) that our checkpoints never hold.
ADAM_FLAGS_OFF = ("amsgrad", "maximize", "capturable", "differentiable")


def save_checkpoint(path: Path, payload: dict, *, parents: bool = True) -> None:
    """Save plain data and tensors only (loadable with weights_only=True), atomically (`parents`: as
    `cvae.runs.write_atomic`)."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
    write_atomic(Path(path), buffer.getvalue(), parents=parents)


def load_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint safely: weights_only (no code runs), with one-line errors.

    This reads the file only; `validate_checkpoint` checks its fields.
    """
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).latest_checkpoint
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint {path} is larger than 2 GiB; refusing to load it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure is the file's fault
        text = str(err)
        if "GLOBAL" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"refusing {path}: it holds Python objects, not plain weights (loading it would run code)"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a PyTorch weights file"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path} is not a cvae checkpoint (no model weights and config)")
    payload = upgrade_checkpoint(payload)  # an earlier version's digit-completion run, read as today's
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version!r}; this cvae reads {FORMAT_VERSION}")
    return payload


# ------------------------------------------------------------------ checks


def _bad(field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint field {field} {problem}")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _short(value: Any) -> str:
    text = repr(value) if not torch.is_tensor(value) else f"a tensor of shape {_shape(value)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
            finite: bool = True, below: float | None = None) -> float:  # fmt: skip
    """`value` as a float, if it is a plain number (not bool, not a tensor) within the limits."""
    if not _is_number(value):
        raise _bad(field, f"must be a number, got {_short(value)}")
    if math.isnan(value) or (finite and not math.isfinite(value)):
        raise _bad(field, f"must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise _bad(field, f"must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise _bad(field, f"must be at most {high}, got {value!r}")
    if below is not None and value >= below:
        raise _bad(field, f"must be below {below}, got {value!r}")
    return value


def _int(field: str, value: Any, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, f"must be an integer, got {_short(value)}")
    if value < low:
        raise _bad(field, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise _bad(field, f"must be at most {high}, got {value}")
    return value


def _dict(field: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _bad(field, f"must be a mapping, got {_short(value)}")
    return value


def _plain_tensor(field: str, value: Any) -> torch.Tensor:
    """A dense CPU tensor: what torch.save writes for a state_dict entry."""
    if not torch.is_tensor(value):
        raise _bad(field, f"must be a tensor, got {_short(value)}")
    if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
        raise _bad(field, f"must be a dense CPU tensor, got a {value.layout} tensor on {value.device.type}")
    return value


def _all_finite(value: torch.Tensor) -> bool:
    """No NaN or infinity in a floating-point tensor; the sum first, which is cheaper than a mask of it."""
    if not value.is_floating_point() or bool(torch.isfinite(value.sum())):
        return True
    return bool(torch.isfinite(value).all())  # the sum may overflow although every value is finite


def _finite(field: str, value: torch.Tensor) -> None:
    if not _all_finite(value):
        raise _bad(field, "holds NaN or infinite values")


def checked_config(payload: dict, max_parameters: int = MAX_PARAMETERS) -> tuple[RunConfig, DatasetInfo]:
    """The checkpoint's config and data shapes, refused if unusable or if its network would be huge.

    The network is built on PyTorch's "meta" device first (shapes only, no
    memory), so a hostile config claiming 10^12 parameters cannot exhaust memory.
    """
    try:
        config = RunConfig.from_dict(payload.get("config"))
    except (CVAEError, TypeError, ValueError, AttributeError) as err:  # e.g. a number where text belongs
        raise CheckpointError(f"the checkpoint's config is unusable ({str(err).splitlines()[0][:160]})") from None
    info = _dataset_info(payload.get("dataset_info"), config)
    model = meta_model(config)
    parameters = sum(p.numel() for p in model.parameters())
    if parameters > max_parameters:
        raise CheckpointError(
            f"the checkpoint's network would have {parameters:,} parameters (at most {max_parameters:,})"
        )
    return config, info


def meta_model(config: RunConfig) -> CVAE:
    """The config's network on the meta device: every shape and dtype, no memory."""
    try:
        with torch.device("meta"):
            return CVAE(config.model)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"the checkpoint's config is unusable ({str(err).splitlines()[0][:160]})") from None


def _dataset_info(raw: Any, config: RunConfig) -> DatasetInfo:
    raw = _dict("dataset_info", raw)
    for key in ("name", "channels", "height", "width", "class_names"):
        if key not in raw:
            raise _bad(f"dataset_info.{key}", "is missing")
    if not isinstance(raw["name"], str):
        raise _bad("dataset_info.name", f"must be a string, got {_short(raw['name'])}")
    names = raw["class_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
        raise _bad("dataset_info.class_names", f"must be a list of strings, got {_short(names)}")
    info = DatasetInfo(raw["name"], _int("dataset_info.channels", raw["channels"], low=1),
                       _int("dataset_info.height", raw["height"], low=1),
                       _int("dataset_info.width", raw["width"], low=1), tuple(names))  # fmt: skip
    model = config.model
    for key, ours, theirs in (("channels", info.channels, model.channels), ("height", info.height, model.height),
                              ("width", info.width, model.width),
                              ("class_names", info.num_classes, model.num_classes)):  # fmt: skip
        if ours != theirs:
            raise _bad(f"dataset_info.{key}", f"gives {ours} but config.model says {theirs}")
    return info


def state_dict_problem(state: Any, model: nn.Module, field: str = "model") -> str | None:
    """Why `state` cannot be loaded into `model` (names, shapes, dtypes, values), or None if it can.

    `model` may live on the meta device: only shapes and dtypes are compared.
    """
    if not isinstance(state, dict):
        return f"checkpoint field {field} must be a mapping of tensors, got {_short(state)}"
    expected = model.state_dict()
    for name in expected:
        if name not in state:
            return f"checkpoint field {field}.{name} is missing"
    for name, value in state.items():
        where = f"{field}.{name}"
        if name not in expected:
            return f"checkpoint field {where} is not a tensor of this model"
        try:
            _plain_tensor(where, value)
        except CheckpointError as err:
            return str(err)
        want = expected[name]
        if value.shape != want.shape:
            return f"checkpoint field {where} has shape {_shape(value)} but the model's tensor has {_shape(want)}"
        if value.dtype != want.dtype:
            return f"checkpoint field {where} is {value.dtype} but the model's tensor is {want.dtype}"
        if not _all_finite(value):
            return f"checkpoint field {where} holds NaN or infinite values"
    return None


def _adam_state(field: str, entry: Any, param: torch.Tensor, name: str) -> dict:
    entry = _dict(field, entry)
    if not entry:
        return {}  # no moments yet: Adam starts them at zero
    unknown = sorted(str(k) for k in set(entry) - {"step", "exp_avg", "exp_avg_sq"})
    if unknown:
        raise _bad(f"{field}.{unknown[0]}", "is not part of Adam's state")
    for key in ("step", "exp_avg", "exp_avg_sq"):
        if key not in entry:
            raise _bad(f"{field}.{key}", "is missing")
    step = entry["step"]
    if torch.is_tensor(step):
        step = _plain_tensor(f"{field}.step", step)
        if step.numel() != 1 or step.dim() != 0 or step.is_complex() or step.dtype == torch.bool:
            raise _bad(f"{field}.step", f"must be a single number, got a {step.dtype} tensor of shape {_shape(step)}")
        step = step.item()
    step = _number(f"{field}.step", step, low=0, high=MAX_ADAM_STEP)
    clean: dict[str, Any] = {"step": torch.tensor(float(step), dtype=torch.float32)}
    for key in ("exp_avg", "exp_avg_sq"):
        where = f"{field}.{key}"
        value = _plain_tensor(where, entry[key])
        if value.shape != param.shape:
            raise _bad(where, f"has shape {_shape(value)} but the model's parameter {name} has {_shape(param)}")
        if not value.is_floating_point():
            raise _bad(where, f"must be a floating-point tensor, got {value.dtype}")
        _finite(where, value)
        if key == "exp_avg_sq" and value.numel() and bool(value.min() < 0):
            raise _bad(where, "holds negative values (a mean of squares cannot be negative)")
        clean[key] = value
    return clean


def _adam_group(field: str, group: Any, fresh: dict, n_params: int) -> dict:
    group = _dict(field, group)
    unknown = sorted(str(k) for k in set(group) - set(fresh) - {"params", "param_names", "initial_lr"})
    if unknown:
        raise _bad(f"{field}.{unknown[0]}", "is not an Adam option")
    clean = {k: v for k, v in fresh.items() if k != "params"}  # a missing option takes its default
    for key, value in group.items():
        where = f"{field}.{key}"
        if key in ("params", "param_names"):
            continue
        if key in ("lr", "initial_lr"):
            clean[key] = _number(where, value, low=0, high=1)
        elif key == "betas":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise _bad(where, f"must be two numbers, got {_short(value)}")
            clean[key] = tuple(_number(f"{where}.{i}", b, low=0, below=1) for i, b in enumerate(value))
        elif key == "eps":
            clean[key] = _number(where, value, high=1)
            if value <= 0:
                raise _bad(where, f"must be positive, got {value!r}")
        elif key == "weight_decay":
            clean[key] = _number(where, value, low=0, high=1e6)
        elif key in ADAM_FLAGS_OFF:
            if value is not False:
                raise _bad(where, f"must be false (the trainer's Adam never sets it), got {_short(value)}")
        elif key in ("foreach", "fused"):
            if value is not None and not isinstance(value, bool):
                raise _bad(where, f"must be true, false or null, got {_short(value)}")
            clean[key] = value
        elif isinstance(fresh[key], bool):
            if not isinstance(value, bool):
                raise _bad(where, f"must be true or false, got {_short(value)}")
            clean[key] = value
        else:  # an option a newer torch added: the same kind of value as its default
            if type(value) is not type(fresh[key]) or (_is_number(value) and not math.isfinite(value)):
                raise _bad(where, f"must be like {fresh[key]!r}, got {_short(value)}")
            clean[key] = value
    params = group.get("params")
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, int) and not isinstance(p, bool) for p in params):
        raise _bad(f"{field}.params", f"must be a list of parameter ids, got {_short(params)}")
    if len(params) != n_params or len(set(params)) != len(params):
        raise _bad(f"{field}.params", f"names {len(set(params))} distinct parameters; the model has {n_params}")
    names = group.get("param_names")
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
                              or len(names) != n_params):  # fmt: skip
        raise _bad(f"{field}.param_names", f"must be {n_params} parameter names, got {_short(names)}")
    return clean


def check_optimizer_state(state: Any, model: nn.Module, learning_rate: float) -> dict:
    """Adam's state_dict, checked against `model`'s parameters; returned renumbered 0..P-1."""
    state = _dict("optimizer", state)
    unknown = sorted(str(k) for k in set(state) - {"state", "param_groups"})
    if unknown:
        raise _bad(f"optimizer.{unknown[0]}", "is not part of an optimizer's state")
    for key in ("state", "param_groups"):
        if key not in state:
            raise _bad(f"optimizer.{key}", "is missing")
    named = list(model.named_parameters())
    import_dynamo_when_needed()  # a fresh Adam's defaults, without importing torch's compiler for them
    fresh = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=learning_rate).param_groups[0]
    groups = state["param_groups"]
    if not isinstance(groups, (list, tuple)) or len(groups) != 1:
        raise _bad("optimizer.param_groups", f"must be a list of one group (the trainer's), got {_short(groups)}")
    group = _adam_group("optimizer.param_groups.0", groups[0], fresh, len(named))
    position = {pid: i for i, pid in enumerate(groups[0]["params"])}
    entries = _dict("optimizer.state", state["state"])
    clean_state = {}
    for pid, entry in entries.items():
        if pid not in position:
            raise _bad(f"optimizer.state.{_short(pid)}", "belongs to no parameter of the optimizer's group")
        i = position[pid]
        name, param = named[i]
        clean = _adam_state(f"optimizer.state.{pid}", entry, param, name)
        if clean:
            clean_state[i] = clean
    group["params"] = list(range(len(named)))
    return {"state": clean_state, "param_groups": [group]}


def _fresh_scheduler_state() -> dict:
    import_dynamo_when_needed()
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))])
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer).state_dict()


def check_scheduler_state(state: Any) -> dict:
    """ReduceLROnPlateau's state_dict: only its own fields (it loads by updating its __dict__), each sane."""
    state = _dict("scheduler", state)
    fresh = _fresh_scheduler_state()
    clean = {}
    for key, value in state.items():
        where = f"scheduler.{key}"
        if key not in fresh:
            raise _bad(f"scheduler.{_short(key)}", "is not part of ReduceLROnPlateau's state")
        if key == "factor":
            clean[key] = _number(where, value, low=0, below=1)
        elif key in ("patience", "cooldown", "cooldown_counter", "num_bad_epochs", "last_epoch"):
            clean[key] = _int(where, value)
        elif key in ("eps", "threshold"):
            clean[key] = _number(where, value, low=0)
        elif key in ("best", "mode_worse"):
            clean[key] = _number(where, value, finite=False)
        elif key == "mode":
            if value not in ("min", "max"):
                raise _bad(where, f"must be 'min' or 'max', got {_short(value)}")
            clean[key] = value
        elif key == "threshold_mode":
            if value not in ("rel", "abs"):
                raise _bad(where, f"must be 'rel' or 'abs', got {_short(value)}")
            clean[key] = value
        elif key in ("min_lrs", "_last_lr"):
            if not isinstance(value, (list, tuple)) or len(value) != 1:
                raise _bad(where, f"must be a list of one number (one parameter group), got {_short(value)}")
            clean[key] = [_number(f"{where}.0", value[0], low=0)]
        elif key == "default_min_lr":
            clean[key] = value if value is None else _number(where, value, low=0)
        else:  # a field a newer torch added: the same kind of value as a fresh scheduler's
            if type(value) is not type(fresh[key]) or (_is_number(value) and not math.isfinite(value)):
                raise _bad(where, f"must be like {fresh[key]!r}, got {_short(value)}")
            clean[key] = value
    return clean


def check_rng_state(field: str, value: Any, length: int, *, try_cpu: bool = False) -> torch.Tensor:
    """A generator state: a 1-D uint8 tensor of the generator's length (and, for the CPU one, loadable)."""
    value = _plain_tensor(field, value)
    if value.dtype != torch.uint8 or value.dim() != 1 or value.numel() != length:
        got = f"a {value.dtype} tensor of shape {_shape(value)}"
        raise _bad(field, f"must be a torch.uint8 tensor of shape ({length},), got {got}")
    if try_cpu:
        try:
            torch.Generator().set_state(value)
        except RuntimeError:
            raise _bad(field, "is not a valid random generator state") from None
    return value


def _check_cuda_rng_state(value: Any) -> torch.Tensor:
    """The CUDA generator's state: its exact length where a GPU is here to ask (the only place it is
    used); elsewhere a 1-D uint8 tensor of sane size, kept for a later resume on a GPU."""
    if torch.cuda.is_available():
        return check_rng_state("rng_cuda", value, torch.cuda.get_rng_state().numel())
    value = _plain_tensor("rng_cuda", value)
    if value.dtype != torch.uint8 or value.dim() != 1 or not 0 < value.numel() <= MAX_RNG_STATE_BYTES:
        raise _bad("rng_cuda", f"must be a 1-D torch.uint8 tensor, got a {value.dtype} tensor of shape {_shape(value)}")
    return value


def check_metrics(value: Any, epoch: int) -> dict:
    """The last epoch's metrics record: numbers, or short lists of numbers (the ledger's per-dimension figures),
    for this epoch (it may be appended to metrics.jsonl)."""
    value = _dict("metrics", value)
    for key, number in value.items():
        if not isinstance(key, str):
            raise _bad(f"metrics.{_short(key)}", "must have a text name")
        if isinstance(number, list):
            if not 0 < len(number) <= MAX_NUMBER_LIST:
                raise _bad(f"metrics.{key}", f"must hold 1 to {MAX_NUMBER_LIST} numbers, got {len(number)}")
            for j, item in enumerate(number):
                _number(f"metrics.{key}[{j}]", item)
        else:
            _number(f"metrics.{key}", number)
    if value.get("epoch") != epoch:
        raise _bad("metrics.epoch", f"is {_short(value.get('epoch'))} but the checkpoint's epoch is {epoch}")
    return dict(value)


def check_same_run(config: RunConfig, expect_config: Any, where: str = "the run folder's config.json") -> None:
    """The checkpoint's model and data must be those of the run folder it resumes into."""
    try:
        expected = RunConfig.from_dict(expect_config)
    except CVAEError as err:
        raise CheckpointError(f"{where} is not a valid run config ({str(err)[:120]}); resume into a new --run-dir") from None  # fmt: skip
    ours, theirs = config.to_dict(), expected.to_dict()
    for section in ("model", "data"):
        for key, value in ours[section].items():
            if theirs[section].get(key) != value:
                raise _bad(
                    f"config.{section}.{key}",
                    f"is {_short(value)} but {where} has {_short(theirs[section].get(key))}: the checkpoint is "
                    "of another run; resume it into its own folder or a new --run-dir",
                )


def validate_checkpoint(payload: Any, *, expect_config: Any = None, max_parameters: int = MAX_PARAMETERS) -> dict:
    """Check every field of a loaded checkpoint before use; return the checked payload.

    The result holds only the fields the trainer reads, each as the trainer
    needs it: the optimizer state renumbered and with its step as a float
    tensor; anything else in the file is dropped. `expect_config`, the run
    folder's own config.json, when resuming into a folder that already holds
    a run: the checkpoint's model and data sections must equal its. Raises
    `CheckpointError` naming the first bad field.
    """
    payload = _dict("(the whole file)", payload)
    if payload.get("format_version") != FORMAT_VERSION:
        raise _bad("format_version", f"is {_short(payload.get('format_version'))}; this cvae reads {FORMAT_VERSION}")
    config, info = checked_config(payload, max_parameters)
    model = meta_model(config)
    if "epoch" not in payload:
        raise _bad("epoch", "is missing")
    epoch = _int("epoch", payload["epoch"], high=MAX_EPOCH)
    problem = state_dict_problem(payload.get("model"), model)
    if problem:
        raise CheckpointError(problem)
    for key in ("optimizer", "scheduler"):
        if key not in payload:
            raise _bad(key, "is missing")
    checked = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "dataset_info": info.to_dict(),
        "epoch": epoch,
        "model": payload["model"],
        "optimizer": check_optimizer_state(payload["optimizer"], model, config.train.learning_rate),
        "scheduler": check_scheduler_state(payload["scheduler"]),
    }
    if "metrics" in payload:
        checked["metrics"] = check_metrics(payload["metrics"], epoch)
    if "rng_cpu" in payload:
        checked["rng_cpu"] = check_rng_state("rng_cpu", payload["rng_cpu"], torch.get_rng_state().numel(), try_cpu=True)
    if "rng_cuda" in payload:
        checked["rng_cuda"] = _check_cuda_rng_state(payload["rng_cuda"])
    if expect_config is not None:
        check_same_run(config, expect_config)
    return checked
