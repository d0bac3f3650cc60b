"""The performance harness of the repository: `python bench/run.py` (see bench/README.md)."""
