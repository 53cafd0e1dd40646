"""oneshot-nas: one-shot neural architecture search in PyTorch.

SearchSpace -> Supernet -> Strategy (ask/tell) -> Trainer -> Evaluator; see the README.
"""

__version__ = "0.1.0"


def search(*args, **kwargs):
    """``oneshot.search(config, out, task=..., space=...)``: see ``oneshot.api.search``."""
    from .api import search as run

    return run(*args, **kwargs)
