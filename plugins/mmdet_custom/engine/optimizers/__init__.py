"""Optimizer wrapper constructors (registered into mmengine on import)."""
