"""Loading and saving network checkpoints, with the architecture inferred from the weights.

Accepted layouts (all read with ``map_location``, so GPU-saved files load on a CPU-only machine):

* this project's ``{"arch", "arch_kwargs", "model": state_dict, "meta"}`` (``save_checkpoint``);
* official PEBAL ``{"model": state_dict}`` or a bare state_dict, keys ``branch1.*`` (268 entries);
* NVIDIA semantic-segmentation ``{"state_dict": ...}`` with ``module.``-prefixed keys and a 19-class
  last conv: the abstention row is added with Kaiming init, as PEBAL's fine-tuning does;
* EdgeNets ESPNetv2 bare state_dicts (``base_net.*``, ``bu_dec_l*``), width s read from the shapes.

Loading is strict: every key must be present with the right shape, and the error names the
offending keys and shapes. The network is built on the meta device and the checkpoint tensors are
assigned into it, so the 137 M-parameter WRN38 is never initialised just to be overwritten.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..labels import NUM_CLASSES
from .espnetv2 import ENCODER_CHANNELS
from .pebal_head import add_abstention
from .registry import ARCHITECTURES, PebalModel, build_model, unwrap

CHECKPOINT_FORMAT = 1
_WRN_KEY = "branch1.final.6.weight"
_ESP_S_KEY = "base_net.level2_0.inp_reinf.1.conv.weight"  # out channels = encoder level-2 width
_ESP_CLS_KEY = "bu_dec_l4.merge_layer.3.weight"
_ESP_DEC_KEY = "bu_dec_l1.merge_layer.3.weight"  # out channels = 4 * base_dec_planes
# Training-only entries that upstream checkpoints carry next to the network (NVIDIA's loss weights).
_IGNORED_PREFIXES = ("criterion.",)


class CheckpointError(ValueError):
    """A file that cannot be turned into one of the registered networks."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that only full (code-running) unpickling could read, and nobody opted in."""


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``{"arch", "arch_kwargs", "model": state_dict, "meta"}`` atomically (tmp + rename).

    ``meta`` holds plain Python values (epoch, metrics, config dict, ...) so the file stays
    loadable with ``torch.load(weights_only=True)``. Tensors are moved to the CPU.
    """
    net = unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": net.arch,
        "arch_kwargs": dict(net.arch_kwargs),
        "model": OrderedDict((k, v.detach().cpu()) for k, v in net.state_dict().items()),
        "meta": {**meta, "model_info": model_meta_info(net, meta)},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def model_meta_info(net: PebalModel, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the saved network is, stored in its meta so every tool can say it (model_settings):
    architecture, PEBAL-fine-tuned or plain segmentation, input size, channel order and the
    calibrated threshold (None until a caller's ``meta["model_info"]`` provides one)."""
    cfg: Mapping[str, Any] = meta["config"] if isinstance(meta.get("config"), Mapping) else {}
    inference: Mapping[str, Any] = cfg["inference"] if isinstance(cfg.get("inference"), Mapping) else {}
    out: dict[str, Any] = {
        "arch": net.arch,
        "kind": "pebal" if net.has_abstention else "segmentation",
        "input_size": [int(v) for v in inference["input_size"]] if "input_size" in inference else None,
        "channel_order": str(inference.get("channel_order", "rgb")),
        "calibrated_threshold": None,
    }
    given: Mapping[str, Any] = meta["model_info"] if isinstance(meta.get("model_info"), Mapping) else {}
    out.update({k: v for k, v in given.items() if v is not None})
    return out


_UNSAFE_PICKLE_ALLOWED = False


def allow_unsafe_pickle(allowed: bool = True) -> None:
    """Let :func:`read_checkpoint` fall back to full unpickling in this process.

    Only the ``pebal`` CLI calls this, for ``--unsafe-load-pickle``; the ROS node never does, so a
    ``model`` parameter set by anyone on the DDS domain can never make the node run pickled code.
    """
    global _UNSAFE_PICKLE_ALLOWED
    _UNSAFE_PICKLE_ALLOWED = bool(allowed)


def unsafe_pickle_allowed() -> bool:
    return _UNSAFE_PICKLE_ALLOWED


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", allow_unsafe: bool | None = None) -> Any:
    """``torch.load(weights_only=True)`` with clear errors.

    Full unpickling can run arbitrary code from the file, so it happens only when the caller opts
    in (``allow_unsafe=True``, or :func:`allow_unsafe_pickle` from the CLI's ``--unsafe-load-pickle``).
    Upstream training checkpoints that pickle extra objects (NVIDIA's argparse namespace) need it
    once; re-save them as plain weights to load them safely from then on.
    """
    path = Path(path)
    if allow_unsafe is None:
        allow_unsafe = _UNSAFE_PICKLE_ALLOWED
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as safe_err:
        if not _looks_like_torch_file(path):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({safe_err})") from None
        found = re.findall(r"GLOBAL ([\w.]+)", str(safe_err))
        what = f"e.g. {found[0]}" if found else "objects the weights-only loader does not accept"
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"{path} holds pickled Python objects besides tensors ({what}); refusing to unpickle it, "
                "because unpickling can run arbitrary code from the file. If you trust its source, pass "
                "--unsafe-load-pickle to the pebal command (the ROS node never unpickles), or re-save its "
                "state_dict once with torch.save in a trusted session") from None
        warnings.warn(f"{path}: not loadable with weights_only=True ({what}); unpickling it fully "
                      "because --unsafe-load-pickle was given", stacklevel=2)
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
            raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types (KeyError, EOFError, RuntimeError...) on junk
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(err).__name__}: {err})") from None


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    # zip container (torch >= 1.6) or a legacy pickle stream (protocol 2+ starts with 0x80).
    return head.startswith(b"PK") or head[:1] == b"\x80"


def extract_state_dict(obj: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, info) from any accepted layout; info has "arch"/"arch_kwargs"/"meta" when stored."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} is not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    info: dict[str, Any] = {}
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            info = {k: obj[k] for k in ("arch", "arch_kwargs", "meta") if k in obj}
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state or len(state) != len(obj):
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{source} is not a checkpoint: expected a state_dict (name -> tensor) or a dict "
                              f"with 'model'/'state_dict'; found keys: {keys}")
    return _normalise_keys(state), info


def _normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = OrderedDict()
    for k, v in state.items():
        while k.startswith("module."):  # (Distributed)DataParallel wrappers
            k = k[len("module."):]
        if k.startswith(_IGNORED_PREFIXES):
            continue
        out[k] = v
    return out


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """(arch, arch_kwargs) from key names and shapes."""
    if _ESP_S_KEY in state and _ESP_CLS_KEY in state:
        c1 = state[_ESP_S_KEY].shape[0]
        widths = [s for s, ch in ENCODER_CHANNELS.items() if ch[1] == c1]
        if not widths:
            raise CheckpointError(f"ESPNetv2 checkpoint with level-2 width {c1} matches no supported s "
                                  f"({', '.join(f'{s}: {ch[1]}' for s, ch in ENCODER_CHANNELS.items())})")
        kwargs: dict[str, Any] = {"s": widths[0], "num_classes": int(state[_ESP_CLS_KEY].shape[0])}
        if _ESP_DEC_KEY in state:
            kwargs["base_dec_planes"] = int(state[_ESP_DEC_KEY].shape[0]) // 4
        return "espnetv2", kwargs
    wrn_key = _WRN_KEY if _WRN_KEY in state else _WRN_KEY[len("branch1."):]
    if wrn_key in state and (wrn_key.replace("final.6.weight", "mod1.conv1.weight") in state):
        return "wrn38_deeplabv3plus", {"num_classes": int(state[wrn_key].shape[0])}
    sample = ", ".join(list(state)[:5])
    raise CheckpointError(f"cannot infer the architecture from the checkpoint keys (first: {sample}); "
                          f"known architectures: {', '.join(sorted(ARCHITECTURES))}. Pass arch=... if it is one.")


def _check_state(model: PebalModel, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {len(mismatched)} key(s): " + "; ".join(mismatched[:10]))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:10]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:10]))
    if problems:
        raise CheckpointError(f"{source} does not fit {model.arch}({_fmt_kwargs(model.arch_kwargs)}): "
                              + " | ".join(problems))


def _fmt_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state_dict") -> nn.Module:
    """Strictly load ``state`` into ``model`` (on any device, meta included), with readable errors."""
    net = unwrap(model)
    _check_state(net, state, source)
    on_meta = any(t.is_meta for t in net.state_dict().values())
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=on_meta)
    if on_meta:
        left = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
        if left:
            raise CheckpointError(f"{source}: tensors not provided by the checkpoint: {', '.join(left[:10])}")
    return model


def load_model(path: str | os.PathLike, arch: str | None = None, map_location: Any = "cpu",
               allow_unsafe: bool | None = None, **arch_kwargs: Any) -> PebalModel:
    """Load any accepted checkpoint into its network, in eval mode.

    ``arch`` (and constructor ``arch_kwargs`` such as ``s``) are inferred from the checkpoint when not
    given; given ones must fit the weights. A 19-output network gets the abstention row (Kaiming init),
    so forward always returns 20 channels. An EdgeNets ESPNetv2 checkpoint keeps its background
    channel 19 (``has_abstention`` False) until ``add_abstention`` is called. ``allow_unsafe``: see
    :func:`read_checkpoint` (None: the process-wide ``--unsafe-load-pickle`` choice, off by default).
    """
    arch = arch or None  # configs use "" / None for "infer it"
    obj = read_checkpoint(path, map_location=map_location, allow_unsafe=allow_unsafe)
    state, info = extract_state_dict(obj, source=str(path))
    stored_arch = info.get("arch")
    if arch is not None and arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    if stored_arch is not None and stored_arch not in ARCHITECTURES:
        raise CheckpointError(f"{path} was saved for unknown architecture {stored_arch!r}; "
                              f"known: {', '.join(sorted(ARCHITECTURES))}")
    if arch is not None and stored_arch is not None and arch != stored_arch:
        raise CheckpointError(f"{path} holds a {stored_arch} network, not {arch}")
    if stored_arch is not None:
        kwargs = dict(info.get("arch_kwargs") or {})
        arch = stored_arch
    else:
        inferred_arch, kwargs = infer_architecture(state) if arch is None else _infer_or_empty(state, arch)
        arch = arch or inferred_arch
    if arch == "wrn38_deeplabv3plus":
        state = OrderedDict((k if k.startswith("branch1.") else "branch1." + k, v) for k, v in state.items())
    kwargs.update(arch_kwargs)
    with torch.device("meta"):
        model = build_model(arch, **kwargs)
    load_state_into(model, state, source=str(path))
    if model.classifier.out_channels == NUM_CLASSES:
        add_abstention(model)
    model.eval()
    if info.get("meta") is not None:
        model.checkpoint_meta = info["meta"]
    return model


def _infer_or_empty(state: Mapping[str, torch.Tensor], arch: str) -> tuple[str, dict[str, Any]]:
    """Inferred kwargs when the keys fit ``arch``; else none, so the strict check reports the misfit."""
    try:
        inferred, kwargs = infer_architecture(state)
    except CheckpointError:
        return arch, {}
    return (arch, kwargs) if inferred == arch else (arch, {})
