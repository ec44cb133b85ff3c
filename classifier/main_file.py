"""Importing a conf's main_file: from the conf's folder, whose modules import each other by their plain names."""
from __future__ import annotations

import builtins
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any


def import_main_file(name: str, folder: Path) -> ModuleType | None:
    """main_file from `folder` (main_file.py, or a dotted name's package path there), or None if it is not there.

    UAI ran user code from its code folder, so `from retrain_conf import …` found the sibling retrain_conf.py.
    Here each folder gets a private package (`_main_file_<hash>`): its modules are importable by their plain
    names from code in that folder only (at load and later, e.g. inside execute()), so two confs in two folders
    may both have a retrain_conf.py, and nothing in the folder becomes importable by anyone else.
    """
    folder = Path(folder).resolve()
    if _source(folder, name.split(".")) is None:
        return None
    package = _CodeFolder.of(folder).package
    return importlib.import_module(f"{package}.{name}")


def _source(folder: Path, parts: list[str]) -> tuple[Path | None, bool] | None:
    """(the file to run, is a package) for a dotted name inside folder, or None."""
    base = folder.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    if base.is_dir():
        return None, True  # a folder without __init__.py: a namespace package, as Python has them
    return None


def _shadows(folder: Path, top: str) -> bool:
    """The folder has a module or a regular package of that name, which takes precedence over an installed one,
    as the folder would on sys.path (a bare sub-folder is a namespace package: Python takes it only when
    nothing else has the name)."""
    found = _source(folder, [top])
    return found is not None and found[0] is not None


class _CodeFolder(importlib.abc.MetaPathFinder):
    """Finds `<package>.<name>` in one folder, and runs that folder's modules with an __import__ that sends
    their plain-name imports of the folder's own modules to `<package>.<name>`."""

    _folders: dict[Path, "_CodeFolder"] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, folder: Path) -> "_CodeFolder":
        with cls._lock:
            if folder not in cls._folders:
                cls._folders[folder] = cls(folder)
            return cls._folders[folder]

    def __init__(self, folder: Path):
        self.folder = folder
        self.package = "_main_file_" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        self.builtins = {**vars(builtins), "__import__": self._import}
        root = ModuleType(self.package, f"the code folder {folder}")
        root.__path__, root.__package__, root.__file__ = [str(folder)], self.package, None
        sys.modules[self.package] = root
        sys.meta_path.insert(0, self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if not fullname.startswith(self.package + "."):
            return None
        found = _source(self.folder, fullname[len(self.package) + 1:].split("."))
        if found is None:
            return None
        file, is_package = found
        locations = [str(self.folder.joinpath(*fullname.split(".")[1:]))] if is_package else None
        if file is None:
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = locations
            return spec
        return importlib.util.spec_from_file_location(fullname, file, submodule_search_locations=locations,
                                                      loader=_Loader(fullname, str(file), self.builtins))

    def _import(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0):
        top = name.partition(".")[0]
        if level == 0 and top and _shadows(self.folder, top) and not self._already_imported(top):
            module = importlib.import_module(f"{self.package}.{name}")
            return module if fromlist else sys.modules[f"{self.package}.{top}"]
        return builtins.__import__(name, globals, locals, fromlist, level)

    def _already_imported(self, top: str) -> bool:
        """The folder's module is already imported under its plain name (the project's own `classifier`, when
        its conf.json sits beside it): one copy of a module, not two."""
        file = getattr(sys.modules.get(top), "__file__", None)
        return bool(file) and Path(file).resolve().is_relative_to(self.folder)


class _Loader(importlib.machinery.SourceFileLoader):
    """Python's own source loader (bytecode cache and all), with the folder's __import__ in the module's builtins."""

    def __init__(self, fullname: str, path: str, module_builtins: dict):
        super().__init__(fullname, path)
        self.module_builtins = module_builtins

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self.module_builtins
        super().exec_module(module)
