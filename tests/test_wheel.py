"""cosfail installs under one name (issue 18): the wheel holds the package `cosfail` and
nothing else at the top of site-packages, with every module of the source tree, and the
commands run from it in a fresh venv."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

from conftest import REPO, InstalledCosfail

SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_modules() -> set[str]:
    """Where each .py file of the source tree lands in the wheel."""
    sources = {"cosfail": "cosfail", **SETUPTOOLS["package-dir"]}
    return {
        f"{package.replace('.', '/')}/{path.relative_to(REPO / src).as_posix()}"
        for package, src in sources.items()
        for path in (REPO / src).rglob("*.py")
        if "__pycache__" not in path.parts
        and not (package == "cosfail" and path.parent != REPO / "cosfail")
    }


def test_the_wheel_installs_only_the_cosfail_package_with_every_source_module(
        installed_cosfail: InstalledCosfail) -> None:
    names = zipfile.ZipFile(installed_cosfail.wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"cosfail", "cosfail-0.1.0.dist-info"}, tops
    assert {n for n in names if n.endswith(".py")} == source_modules()


def test_cosfail_help_runs_from_the_installed_wheel_in_a_fresh_venv(
        installed_cosfail: InstalledCosfail) -> None:
    done = installed_cosfail.run("cosfail", "--help")
    assert done.returncode == 0, done.stdout + done.stderr
    for command in ("failover", "switchover", "failback", "reclaim", "backup", "status"):
        assert command in done.stdout, command
    where = installed_cosfail.run(
        "python", "-c", "import cosfail.workflows.trigger as t; print(t.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed_cosfail.site_packages), where
    # the layers are subpackages only: a bare `api` or `workers` is nobody's
    bare = installed_cosfail.run("python", "-c", "import workers")
    assert bare.returncode != 0 and "No module named 'workers'" in bare.stderr, bare


def test_cosprintd_runs_from_the_installed_wheel(installed_cosfail: InstalledCosfail) -> None:
    done = installed_cosfail.run("cosprintd", "--help")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--node" in done.stdout
