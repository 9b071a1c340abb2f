"""The documentation keeps up with the code: every option of every config group and every
top-level setting of ``train`` is named on the configuration page (a new ``conf/`` file without
docs fails here), the README stays a short front page whose set-up commands are the ones CI runs,
and the user docs speak of the project, not of its issue tracker or of a test machine's paths.
The site itself is built by CI with ``mkdocs build --strict``. Fast: only reads files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CONFIGURATION_PAGE = DOCS / "configuration.md"
README_MAX_LINES = 220


def group_options() -> list[str]:
    """``group=name`` for each option file of ``conf/`` (nested groups as ``hydra/launcher``);
    files starting with ``_`` are shared parts (``method/_base.yaml``), not options."""
    return sorted(
        f"{path.parent.relative_to(CONF).as_posix()}={path.stem}"
        for path in CONF.glob("*/**/*.yaml")
        if not path.stem.startswith("_")
    )


def train_keys() -> list[str]:
    """The top-level keys of ``conf/train.yaml``, the settings of ``segssl train``."""
    return sorted(yaml.safe_load((CONF / "train.yaml").read_text()))


def test_the_option_list_is_found():
    """Guard against a glob that finds nothing and so checks nothing."""
    options = group_options()
    assert "method=dsaif" in options and "hydra/launcher=slurm" in options, options
    assert "method=_base" not in options
    assert {"seed", "resume", "defaults"} <= set(train_keys())


@pytest.mark.parametrize("option", group_options())
def test_every_config_option_is_on_the_configuration_page(option):
    page = CONFIGURATION_PAGE.read_text()
    assert option in page, (
        f"conf/{option.replace('=', '/')}.yaml is not named as `{option}` in "
        f"{CONFIGURATION_PAGE.relative_to(ROOT)}: add a row for it to its group's table"
    )


@pytest.mark.parametrize("key", train_keys())
def test_every_train_setting_is_on_the_configuration_page(key):
    page = CONFIGURATION_PAGE.read_text()
    assert f"`{key}`" in page, (
        f"conf/train.yaml's top-level key {key!r} is not named as `{key}` in "
        f"{CONFIGURATION_PAGE.relative_to(ROOT)}: add it to the table of top-level settings"
    )


def test_readme_is_a_short_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the detail to docs/"
    )


def test_readme_set_up_is_what_ci_runs():
    """The README's two set-up commands are the ones `.ci/run` proves ("README set-up 1/2")."""
    readme = README.read_text()
    set_up = readme.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert set_up.splitlines() == ['pip install -e ".[dev]"', "python -m pytest"], set_up
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pip install -e ".[dev]"' in ci and "\npython -m pytest\n" in ci
    assert "mkdocs build --strict" in ci


def test_every_docs_page_is_in_the_nav():
    """A page left out of mkdocs.yml's nav is built but found by no reader."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert pages, "docs/ holds no page"
    missing = [page for page in pages if page not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


@pytest.mark.parametrize(
    "pattern, why",
    [
        (r"\bissues? #?\d+", "an issue number (say what changed, not where it was asked)"),
        (r"shared/data", "a test machine's data path (use /path/to/DATASET)"),
    ],
)
def test_user_docs_speak_of_the_project(pattern, why):
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [README, *sorted(DOCS.rglob("*.md"))]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line, re.IGNORECASE)
    ]
    assert not found, f"{why}:\n" + "\n".join(found)
