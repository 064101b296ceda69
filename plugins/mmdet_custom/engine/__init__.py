"""mmengine glue: hooks, runner pieces and optimizer constructors."""
from . import hooks, optimizers, runner  # noqa: F401
