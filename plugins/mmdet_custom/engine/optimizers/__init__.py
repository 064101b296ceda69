"""Optimizer wrapper constructors (registered into mmengine on import)."""
from .layer_decay_optim_constructor import LayerDecayOptimWrapperConstructor

__all__ = ['LayerDecayOptimWrapperConstructor']
