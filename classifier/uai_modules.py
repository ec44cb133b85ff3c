"""UAI's module names (uai.arch.tf_model, uai.arch_conf.tf_conf, …) for UAI code, when uai-sdk is not installed."""
from __future__ import annotations

import importlib.util
import logging
import sys
from types import ModuleType

log = logging.getLogger(__name__)

# module → {name in UAI: (our module, our name)}: what UAI's inference code imports from the SDK.
UAI_NAMES = {
    "uai.arch.base_model": {"AiUcloudModel": ("model", "AiUcloudModel")},
    "uai.arch.tf_model": {"TFAiUcloudModel": ("model", "TFAiUcloudModel"), "AiUcloudModel": ("model", "AiUcloudModel"),
                          "TFJsonConfLoader": ("conf", "TFJsonConfLoader")},
    "uai.arch_conf.base_conf": {"ArchJsonConfLoader": ("conf", "ArchJsonConfLoader")},
    "uai.arch_conf.tf_conf": {"TFJsonConfLoader": ("conf", "TFJsonConfLoader"),
                              "ArchJsonConfLoader": ("conf", "ArchJsonConfLoader")},
}
_ALIAS = "__classifier_alias__"  # marks the modules made here


def provide() -> None:
    """Makes `from uai.arch.tf_model import TFAiUcloudModel` (and the rest of UAI_NAMES) give the project's classes.

    If the real uai-sdk is installed, it wins: nothing is made, and a log line says where it comes from.
    """
    existing = sys.modules.get("uai")
    if existing is not None and getattr(existing, _ALIAS, False):
        return
    spec = importlib.util.find_spec("uai") if existing is None else existing.__spec__
    if spec is not None:
        log.info("uai.* comes from the installed uai-sdk (%s), not from this project",
                 spec.origin or list(spec.submodule_search_locations or []))
        return
    from . import conf, model

    ours = {"model": model, "conf": conf}
    for name in ["uai", "uai.arch", "uai.arch_conf", *UAI_NAMES]:
        module = ModuleType(name, f"UAI's {name}, provided by the classifier project (uai-sdk is not installed)")
        setattr(module, _ALIAS, True)
        if name in ("uai", "uai.arch", "uai.arch_conf"):
            module.__path__ = []  # a package: its submodules are the ones made here
        for uai_name, (where, our_name) in UAI_NAMES.get(name, {}).items():
            setattr(module, uai_name, getattr(ours[where], our_name))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
