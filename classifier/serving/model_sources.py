"""Where a server's models come from, each by name: --model NAME=PATH, TF Serving's model list, a trained model
saved into the repository folder (whose entries, and the naming rule, are the core's: from_path.discover).

    --model-repository DIR    every entry of DIR is a model, named by its folder name or file stem
    --model NAME=PATH         one model, named (repeatable); a plain --model PATH or --conf: one model, as before
    --model-config-file FILE  TF Serving's model_config_list: each config's name and base_path
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from google.protobuf import text_format

from ..conf import ConfError
from ..from_path import checked_name, conf_of
from .protos import tf_serving_pb2 as pb

def named(pairs: list[str]) -> dict[str, Path]:
    """--model NAME=PATH, each → its conf.json, by name."""
    found: dict[str, Path] = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path:
            raise ConfError(f"--model {pair}: give NAME=PATH to name a model among others")
        if checked_name(name, f"--model {pair}") in found:
            raise ConfError(f"--model {pair}: {name!r} is named twice (a model of that name is served already)")
        found[name] = conf_of(Path(path).expanduser().resolve())
    return found


def read_model_config(path: Path) -> dict[str, Path]:
    """A model_config_list in protobuf's text format, as TF Serving's --model_config_file takes it → each model's
    conf.json, by name. A relative base_path is taken from the file's folder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfError(f"--model-config-file {path}: cannot be read: {exc}") from None
    config = pb.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:  # the line, the column and the field it did not understand
        raise ConfError(f"--model-config-file {path}: {exc}") from None
    return models_of(config, Path(path).resolve().parent, f"--model-config-file {path}")


def models_of(config: pb.ModelServerConfig, folder: Path, where: str) -> dict[str, Path]:
    """Each config's conf.json, by name; what this server cannot honour is refused, saying what, not ignored."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfError(f"{where}: no model_config_list (the only kind of config this server reads)")
    found: dict[str, Path] = {}
    for model in config.model_config_list.config:
        name = checked_name(model.name, where)
        here = f"{where}: model {name!r}"
        if name in found:
            raise ConfError(f"{here} is listed twice")
        if not model.base_path:
            raise ConfError(f"{here} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfError(f"{here}: model_platform {model.model_platform!r}; this server takes the formats "
                            "--model takes (leave model_platform out, or say \"tensorflow\")")
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") not in (None, "latest") or policy.latest.num_versions > 1:
            raise ConfError(f"{here}: model_version_policy {text_format.MessageToString(policy, as_one_line=True)}; "
                            "this server serves the newest version folder of each model only (latest, one version)")
        if model.version_labels:
            raise ConfError(f"{here}: version_labels are not served; ask for a version by number, or for none")
        base = Path(model.base_path).expanduser()
        base = base if base.is_absolute() else folder / base
        if not base.exists():
            raise ConfError(f"{here}: base_path {base} does not exist")
        found[name] = conf_of(base)
    if not found:
        raise ConfError(f"{where}: the model_config_list lists no model")
    return found


def staged(folder: Path, name: str, model: Path) -> Path:
    """A trained model's folder copied into the repository folder under a hidden name, which a rescan skips (in a
    thread: ~50 MB). OSError if the folder cannot be written (a read-only mount)."""
    staging = folder / f".{name}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model, staging, ignore=shutil.ignore_patterns("report"))
    return staging


def moved_in(folder: Path, name: str, staging: Path) -> tuple[Path, Path | None]:
    """The staged model renamed to `name`, whole (two renames: call it on the event loop, between rescans): its
    conf.json, and the previous folder of that name moved aside, for the caller to delete once the new model
    serves (None if there was none)."""
    previous = None
    if (folder / name).exists():
        previous = folder / f".{name}.previous"
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder / name, previous)
    os.replace(staging, folder / name)
    return conf_of(folder / name), previous
