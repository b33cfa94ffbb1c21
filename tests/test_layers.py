"""The packages keep their layers (issue 18): import-linter's contract in pyproject.toml,
and, checked on the source itself, that workers never imports workflows."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

from conftest import InstalledCosfail

from cosfail import workers, workflows

REPO = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]


def test_lint_imports_keeps_every_contract(installed_cosfail: InstalledCosfail) -> None:
    # On the installed package: only there are cosfail's subpackages inside cosfail/.
    # From outside the source tree, whose cosfail/ would be found first; --no-cache: the
    # cache would be written into the current directory.
    done = subprocess.run(  # noqa: S603
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
         str(REPO / "pyproject.toml")],
        capture_output=True, text=True, timeout=120, cwd=installed_cosfail.root,
        env={**os.environ, "PYTHONPATH": str(installed_cosfail.site_packages)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 broken" in done.stdout, done.stdout
    # grimp read every module the wheel installed, not an empty package (Alembic's
    # migration scripts are data it loads by path, not modules of a package)
    modules = [n for n in zipfile.ZipFile(installed_cosfail.wheel).namelist()
               if n.endswith(".py") and "/migrations/" not in n]
    assert f"Analyzed {len(modules)} files" in done.stdout, done.stdout


def test_the_contract_layers_every_installed_package() -> None:
    """A package setuptools installs but the contract leaves out is checked by nothing."""
    installed = {name.removeprefix("cosfail.") for name in CONFIG["setuptools"]["package-dir"]}
    linter = CONFIG["importlinter"]
    [contract] = [c for c in linter["contracts"] if c["type"] == "layers"]
    assert linter["root_package"] == "cosfail" and contract["containers"] == ["cosfail"]
    assert set(contract["layers"]) == installed


def imported(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in the file `path` of `package`, wherever it stands
    (in a function too), relative ones resolved, and `from p import m` as both p and p.m."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module",
                                             "__import__")):
            yield node.lineno, node.args[0].value


def test_workers_never_imports_workflows() -> None:
    """workflows implements what workers' steps need (the journal, the start-up check)
    and hands it in through workers.runner: an import upward, even a lazy one inside a
    function, would tie the two layers back together."""
    root = Path(workers.__file__).parent
    upward = workflows.__name__
    found = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sorted(root.rglob("*.py"))
        for line, name in imported(path, ".".join(
            [workers.__name__, *path.parent.relative_to(root).parts]))
        if name == upward or name.startswith(upward + ".")
    ]
    assert not found, "\n".join(found)
