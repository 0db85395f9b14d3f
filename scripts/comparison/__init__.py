"""Pieces of `scripts/compare.py`: stage store, corpus/cache stages, statistics, baseline, report."""
