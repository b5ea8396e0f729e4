"""The management API (``pacs-sync api``) and the ``/pacs-sync`` dashboard."""
