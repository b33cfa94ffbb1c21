"""cosfail: failover for COSprint print domains.

The source tree keeps the project's packages at its top (api/, cosprint/, launcher/,
workers/, workflows/); installed, they are this package's subpackages (cosfail.api, ...,
pyproject.toml's package-dir), so that no `api` or `workers` of cosfail's meets another
project's in site-packages. Layers, top first: launcher -> api -> workflows -> workers ->
cosprint (docs/architecture.md).
"""

from pathlib import Path

# Run from the source tree, the packages stand beside this one. The editable install's
# import hook finds them there too, but a cosprintd starts with `python -S` (no
# site-packages, so no hook: cosprint/drivers/reference.py), and it must import the very
# files of the worker that started it.
_source = Path(__file__).resolve().parent.parent
if not Path(__path__[0], "cosprint").is_dir() and (_source / "cosprint" / "__init__.py").is_file():
    __path__.append(str(_source))
