"""A stranger's machine: pyproject.toml names every import, the locks hold, the core runs without the server, a quiet
start."""
from __future__ import annotations

import ast
import itertools
import json
import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from conftest import CAT_LABELS, ROOT

SERVING_MODULES = ("fastapi", "starlette", "uvicorn", "gradio", "gradio_client", "prometheus_client", "ray",
                   "classifier.serving", "classifier.retrain")
# Imported only there (app.py never imports them).
OPTIONAL = {ROOT / "classifier" / "serving" / name: "requirements-ray.txt" for name in ("ray_serve.py", "ray_page.py")}


def requirement_names(path: Path) -> set[str]:
    """The distributions a requirements file names, with those of the files it includes (-r)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            names |= requirement_names(path.parent / line.split(None, 1)[1])
        elif line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def third_party_imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Top-level modules a file imports (anywhere, or only at module level: what importing it needs), other than
    the standard library and the project's own."""
    from classifier.uai_modules import UAI_NAMES  # uai.*: UAI's module names, which the project provides

    local = {p.stem for folder in (ROOT, path.parent) for p in folder.iterdir()}
    local |= {name.split(".")[0] for name in UAI_NAMES}
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in local}


def unnamed_imports(paths: list[Path], allowed_for, module_level_only: bool = False) -> list[str]:
    """Each third-party import in paths whose package is not among allowed_for(path)'s requirement names."""
    owners = packages_distributions()
    missing = []
    for path in paths:
        for module in sorted(third_party_imports(path, module_level_only)):
            distributions = {d.lower().replace("_", "-") for d in owners.get(module, [])}
            assert distributions, f"{path.relative_to(ROOT)} imports {module}, which no installed package provides"
            if not distributions & allowed_for(path):
                missing.append(f"{module} ({'/'.join(sorted(distributions))}) in {path.relative_to(ROOT)}")
    return missing


def project() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def names_of(requirements: list[str]) -> set[str]:
    """The distributions a list of requirements (pyproject.toml's) names."""
    from packaging.requirements import Requirement

    return {canonical(Requirement(line).name) for line in requirements}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct(part: str) -> set[str]:
    """The distributions pyproject.toml names for a part: "dependencies", an extra ("ray", "dev") or a group
    ("runtime")."""
    meta = project()
    if part == "dependencies":
        return names_of(meta["project"]["dependencies"])
    if part in meta["project"]["optional-dependencies"]:
        return names_of(meta["project"]["optional-dependencies"][part])
    return names_of(meta["dependency-groups"][part])


def test_pyproject_names_every_package_the_app_and_library_import():
    required, ray = direct("dependencies"), direct("ray")
    missing = unnamed_imports([ROOT / "app.py", *sorted((ROOT / "classifier").rglob("*.py"))],
                              lambda path: required | (ray if path in OPTIONAL else set()))
    assert not missing, "pyproject.toml's dependencies do not name: " + "; ".join(missing)


def test_the_runtime_group_names_what_importing_the_app_needs():
    """The serving-only install (the Docker image's runtime stage: requirements-serve.txt, the "runtime" group's
    lock) has no TensorFlow: every module of the app and the library must import with it alone; TensorFlow,
    Keras and NNCF are imported only inside the functions that convert or retrain."""
    runtime = direct("runtime")
    assert not runtime & {"tensorflow-cpu", "tensorflow", "keras", "nncf", "matplotlib"}
    assert not set(pins(ROOT / "requirements-serve.txt")) & {"tensorflow-cpu", "tensorflow", "keras", "nncf"}
    # A part of the whole, with the same ranges.
    assert set(project()["dependency-groups"]["runtime"]) <= set(project()["project"]["dependencies"])
    missing = unnamed_imports([ROOT / "app.py", *sorted((ROOT / "classifier").rglob("*.py"))],
                              lambda path: runtime | (direct("ray") if path in OPTIONAL else set()),
                              module_level_only=True)
    assert not missing, "the runtime group does not name: " + "; ".join(missing)


def test_the_dev_extra_names_every_package_the_tests_and_benchmark_import():
    allowed = direct("dependencies") | direct("ray") | direct("dev") | requirement_names(
        ROOT / "requirements-nodeps.txt")
    missing = unnamed_imports(sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]),
                              lambda path: allowed)
    assert not missing, "pyproject.toml's dev extra does not name: " + "; ".join(missing)


LOCKS = {"requirements.txt": ["dependencies"], "requirements-serve.txt": ["runtime"],
         "requirements-ray.txt": ["dependencies", "ray"], "requirements-dev.txt": ["dependencies", "ray", "dev"]}


def pins(path: Path) -> dict[str, str]:
    """A lock's pins: {distribution: version}."""
    found = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^]]*\])?==([^\s;]+)", line):
            found[canonical(match.group(1))] = match.group(3)
    return found


def test_the_locks_agree_with_pyproject_with_each_other_and_with_what_the_tests_run():
    """Each lock (tools/lock.sh) pins every package its part of pyproject.toml names, within its range; a package
    in two locks has one version (so installing requirements-ray.txt after requirements.txt changes nothing); a
    lock holds each of its packages' own requirements (a lock that holds: nothing left for pip to choose); and
    this environment, which ./test.sh installed from requirements-dev.txt, runs what it pins."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    meta = project()
    parts = {"dependencies": meta["project"]["dependencies"], **meta["project"]["optional-dependencies"],
             **meta["dependency-groups"]}
    locks = {name: pins(ROOT / name) for name in LOCKS}
    for name, wanted in LOCKS.items():
        for line in [line for part in wanted for line in parts[part]]:
            requirement = Requirement(line)
            pinned = locks[name].get(canonical(requirement.name))
            assert pinned and requirement.specifier.contains(pinned, prereleases=True), (name, line, pinned)
    for (one, a), (other, b) in itertools.combinations(locks.items(), 2):
        assert {n: (v, b[n]) for n, v in a.items() if n in b and b[n] != v} == {}, (one, other)
    assert "grpcio-reflection" in locks["requirements-ray.txt"]  # the package that broke `import ray.serve`
    for name, pinned in locks.items():
        for package in pinned:
            try:
                installed = distribution(package)
            except PackageNotFoundError:
                raise AssertionError(f"{package} ({name}) is not installed: run ./test.sh") from None
            assert installed.version == pinned[package], (name, package, installed.version)
            for line in installed.requires or []:
                requirement = Requirement(line)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    assert canonical(requirement.name) in pinned, f"{name}: {package} needs {requirement.name}"


def test_the_core_loads_and_classifies_without_any_serving_module(tmp_path):
    script = f"""
import json, runpy, sys
import classifier
model = classifier.load({str(ROOT / 'conf.json')!r})
[result] = model.execute([{str(ROOT / 'examples' / 'cat.jpeg')!r}], 1)
sys.argv = ["classifier", {str(ROOT / 'examples' / 'cat.jpeg')!r}]
try:
    runpy.run_module("classifier", run_name="__main__")
except SystemExit as exit:
    code = exit.code
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {SERVING_MODULES!r}
                or name.startswith({SERVING_MODULES[-2:]!r}))
print(json.dumps({{"top": result[0][0], "cli_exit": code, "serving_modules": loaded}}))
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["top"] in CAT_LABELS and out["cli_exit"] == 0
    assert out["serving_modules"] == []


def test_the_core_never_imports_serving_code():
    # cli.py is the `classifier` command, above every part as app.py is: each subcommand imports its own.
    for path in sorted(p for p in (ROOT / "classifier").glob("*.py") if p.name != "cli.py"):
        text = path.read_text()
        assert not re.search(r"^\s*from \.(serving|retrain)\b|^\s*import classifier\.(serving|retrain)", text, re.M), \
            f"{path.name} (the core) imports serving or retraining code"


def test_nothing_in_the_repository_reads_beside_it():
    files = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".sh") or p.name in ("run", "Dockerfile")]
    offenders = [str(p.relative_to(ROOT)) for p in files if ".git" not in p.parts
                 and re.search(r"\.\./shared|parent\s*/\s*\"shared\"", p.read_text(errors="ignore"))]
    assert offenders == [], "these read the shared folder beside the repository, which no user has"


def test_the_command_line_starts_quietly_and_verbose_brings_tensorflows_lines_back():
    photo = str(ROOT / "examples" / "cat.jpeg")
    quiet = subprocess.run([sys.executable, "-m", "classifier", photo], cwd=ROOT, capture_output=True, text=True,
                           timeout=180)
    assert quiet.returncode == 0 and quiet.stdout.splitlines()[0] == photo
    assert quiet.stderr.strip() == "", f"TensorFlow's start-up lines leaked: {quiet.stderr[:500]}"
    loud = subprocess.run([sys.executable, "-m", "classifier", "--verbose", photo], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert loud.returncode == 0 and ("XNNPACK delegate" in loud.stderr or "OpenVINO" in loud.stderr)


def test_the_server_starts_quietly(server_process):
    """Before the model line, only our own log lines: none of TensorFlow's or LiteRT's native start-up lines."""
    from classifier.quiet import NATIVE_NOISE

    before_model = server_process.output().split("* Model:")[0].splitlines()
    noise = [line for line in before_model
             if NATIVE_NOISE.match(line) or re.search(r" tensorflow: |:tensorflow:", line)]
    assert noise == []
    assert all(" classifier." in line for line in before_model), before_model


def test_the_library_and_app_py_pass_the_linter():
    """ruff, with pyproject.toml's rules (pyflakes' checks, syntax, 120 columns), on classifier/ and app.py."""
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "classifier", "app.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def classifier_imports() -> dict[str, set[str]]:
    """Each module of classifier/ and the modules of classifier/ it imports (anywhere in it, lazy imports too)."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(path): path for path in (ROOT / "classifier").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                imported |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                             for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {module for module in imported if module in modules} - {name}
    return graph


def test_no_import_circle_in_the_library_and_the_protocols_import_no_transport():
    graph = classifier_imports()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for imported in sorted(graph[module]):
            assert seen.get(imported) != 1, "import circle: " + " → ".join([*path, module, imported])
            if imported not in seen:
                visit(imported, [*path, module])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [])
    for free_of_transports in ("protocols.py", "access.py"):  # the protocols' logic; who may call what
        tree = ast.parse((ROOT / "classifier" / "serving" / free_of_transports).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module and not node.level}
        assert not imported & {"fastapi", "starlette", "grpc", "uvicorn", "gradio"}, (free_of_transports, imported)
    assert "classifier.serving.service" not in graph["classifier.serving.protocols"]  # a route module
