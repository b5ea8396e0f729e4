"""``python -m pacs_sync`` runs the ``pacs-sync`` CLI (used to start background processes)."""

from pacs_sync.cli import main

main()
