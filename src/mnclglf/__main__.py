"""``python -m mnclglf`` runs the CLI (as the ``mnclglf`` console script does)."""

from mnclglf.cli import main

main()
