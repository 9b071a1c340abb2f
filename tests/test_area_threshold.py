"""The DSAIF area rule's module stays light: `segssl plan` computes the threshold without
importing torch, MONAI or higra, and segssl.filters still re-exports the tree filters."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import segssl_env


def modules_after(code: str) -> dict[str, bool]:
    """Which heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\n" + (
        "print(json.dumps({m: m in sys.modules for m in "
        "('torch', 'monai', 'higra', 'segssl.filters.tree_filter')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=segssl_env(), capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_the_planner_imports_neither_torch_nor_higra():
    for code in ("import segssl.planning.planner", "import segssl.filters.area_threshold"):
        assert not any(modules_after(code).values()), code


def test_the_tree_filters_stay_functions_after_their_submodule_is_imported():
    code = (
        "import segssl.filters.panel\n"  # imports segssl.filters.tree_filter, the submodule
        "from segssl.filters import dual_tree_filter, tree_filter\n"
        "assert callable(tree_filter) and tree_filter.__name__ == 'tree_filter'\n"
        "assert dual_tree_filter.__module__ == 'segssl.filters.tree_filter'"
    )
    assert modules_after(code)["higra"]
