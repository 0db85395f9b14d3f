"""Checkpoints: orbax save/restore, loading any checkpoint path, Hugging Face import/export.

Imports only `trainer.model`.
"""
