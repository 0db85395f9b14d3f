"""The model: configs, layers, attention, the Gemma 2 transformer assemblies, poolers and heads.

Flax only: no TensorFlow, no gin, nothing else of this project is imported here.
"""
