"""``python -m pykv``: the pykv command line."""

from ._cli import main

main()
