"""distmtl: multi-task learning of classification tasks whose training data do not share annotations."""

__version__ = "0.1.0"

from distmtl.errors import DistmtlError  # noqa: E402
from distmtl.tasks import Task  # noqa: E402

__all__ = ["DistmtlError", "Task", "__version__"]
