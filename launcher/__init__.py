"""What starts and wires the others: the `cosfail` command line, the whole domain on this
machine (`cosfail local`), the demo and the demo domain it runs (`cosfail demo`,
`cosfail init-demo`).

The top layer (pyproject.toml's [tool.importlinter]): it may import every other package,
and none imports it.
"""
