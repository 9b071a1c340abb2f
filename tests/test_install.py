"""What a user's install gets: the wheel carries the configs and the package, nothing else, and
declares exactly the third-party packages that segssl imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "segssl"
CONF = REPO / "conf"
# what the build reads (a fresh clone has more, none of which may ship: tests, scripts, data)
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "segssl", "conf")

# import name -> distribution name, where they differ; others: the import name with "_" -> "-".
# pytorch-lightning ships the lightning_fabric package too (a separate lightning-fabric would
# install over the same files).
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "hydra": "hydra-core",
    "lightning_fabric": "pytorch-lightning",
    "pytorch_lightning": "pytorch-lightning",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}


def normalise(name: str) -> str:
    """PEP 503 name: case and runs of - _ . do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel ``pip wheel .`` builds from this checkout's files (a few seconds).

    Built from a copy, as from a fresh clone: setuptools builds in the source folder, and files
    a build left in ``build/`` would otherwise ship again even after their source is deleted.
    """
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in PROJECT_FILES:
        if (REPO / name).is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, ignore=skip)
        else:
            shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (path,) = out.glob("segssl-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.mark.slow  # pip builds the wheel in an isolated environment: 10-40 s on 2 busy cores
def test_wheel_carries_every_config_and_module_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    configs = {f"segssl/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert "segssl/conf/hydra/launcher/slurm.yaml" in configs  # nested groups are counted
    shipped_configs = {n for n in names if n.startswith("segssl/conf/")}
    assert shipped_configs == configs
    modules = {
        p.relative_to(REPO).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts and p.relative_to(PACKAGE).parts[0] != "conf"
    }
    shipped_modules = {n for n in names if n.endswith(".py")}
    missing = sorted(modules - shipped_modules)
    assert not missing, f"modules missing from the wheel (a folder without __init__.py?): {missing}"
    assert shipped_modules == modules, f"extra modules: {sorted(shipped_modules - modules)}"
    outside = {n for n in names if not n.startswith(("segssl/", "segssl-"))}
    assert not outside, f"the wheel ships files outside the package: {sorted(outside)}"
    assert not [n for n in names if "tests/" in n or "__pycache__" in n or n.endswith(".pyc")]
    # the config contents are the checkout's, byte for byte (one source, not a stale copy)
    train = wheel.read("segssl/conf/train.yaml")
    assert train == (CONF / "train.yaml").read_bytes()


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files of segssl/ that import it (absolute imports, not stdlib)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top != "segssl" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


def config_targets() -> dict[str, set[str]]:
    """Top-level module -> config files whose ``_target_`` names it."""

    def targets(node: object):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str):
                    yield value
                else:
                    yield from targets(value)
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    found: dict[str, set[str]] = {}
    for path in CONF.rglob("*.yaml"):
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for target in targets(tree):
            top = target.split(".")[0]
            if top != "segssl" and "${" not in target:
                found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


def declared_dependencies() -> set[str]:
    """pyproject.toml's runtime dependencies (extras such as dev excluded), normalised names."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {normalise(re.match(r"[A-Za-z0-9._-]+", r)[0]) for r in project["dependencies"]}


def test_the_mapping_of_imports_to_distributions_is_real() -> None:
    """The map above says where each import comes from in the installed environment."""
    from importlib.metadata import packages_distributions

    installed = packages_distributions()
    for module in third_party_imports():
        distribution = normalise(DISTRIBUTION_OF.get(module, module))
        providers = {normalise(d) for d in installed.get(module, [])}
        assert distribution in providers, f"{module} is provided by {providers}, not {distribution}"


def test_every_import_is_declared_and_every_dependency_used() -> None:
    declared = declared_dependencies()
    assert "torch" in declared and "rich" not in declared
    used: dict[str, set[str]] = {}
    for source in (third_party_imports(), config_targets()):
        for module, files in source.items():
            distribution = normalise(DISTRIBUTION_OF.get(module, module))
            used.setdefault(distribution, set()).update(files)
    undeclared = {d: sorted(files) for d, files in used.items() if d not in declared}
    assert not undeclared, f"imported but not in pyproject.toml dependencies: {undeclared}"
    unused = declared - set(used)
    assert not unused, f"declared in pyproject.toml but never imported by segssl/: {unused}"
