"""`timelyfreeze simulate` (being built)."""
