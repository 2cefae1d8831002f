"""``python -m kingest`` runs the command line."""

from kingest.cli.main import main

main()
