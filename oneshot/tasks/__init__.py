"""Tasks by name: ``tasks.create("cifar10", data=PATH)``. See ``base.Task``."""

from .base import Stream, Task, available, create, register
from . import images, inpainting, ptb, toy  # noqa: F401  (registers cifar10, image-folder, inpainting, ptb, toy)
from .custom import TensorTask, from_dataset, from_tensors

__all__ = ["Task", "Stream", "TensorTask", "create", "register", "available", "as_task", "from_tensors",
           "from_dataset"]


def as_task(data) -> Task:
    """A ``Task`` as it is, or CIFAR-shaped ``data.Cifar10`` tensors as an image-classification task."""
    from ..data import Cifar10
    from ..errors import UserError
    from .images import ImageClassification

    if isinstance(data, Task):
        return data
    if isinstance(data, Cifar10):
        return ImageClassification(data, "cifar10")
    raise UserError(f"expected a oneshot Task or data.Cifar10 tensors, got {type(data).__name__}; "
                    "wrap your data with oneshot.tasks.from_tensors or from_dataset")
