"""``python -m gls_core.cli``: the `gls` command line."""

from . import main

main()
