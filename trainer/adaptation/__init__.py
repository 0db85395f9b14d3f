"""Adaptation: decoder-only checkpoint -> encoder-decoder / encoder params, and distillation."""
