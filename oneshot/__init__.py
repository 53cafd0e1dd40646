"""oneshot-nas: one-shot neural architecture search in PyTorch.

SearchSpace -> Supernet -> Strategy (ask/tell) -> Trainer -> Evaluator; see the README.
"""

__version__ = "0.1.0"
