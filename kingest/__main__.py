"""``python -m kingest`` runs the command line."""

from kingest.cli import main

main()
