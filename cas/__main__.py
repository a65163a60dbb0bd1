"""``python -m cas``."""

from .cli.main import main

main()
