"""Evaluation: scoring (label words, greedy decoding) and the metrics of a checkpoint on a task."""
