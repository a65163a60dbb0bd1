"""``python -m cas``."""

from cas.cli.main import main

main()
