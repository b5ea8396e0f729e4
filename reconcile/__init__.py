"""``pacs-sync verify``: reconcile the PACS source with the TerraFusion target, row by row."""
