"""Self-contained reproductions of the papers' small experiments, each run by `python -m`."""
