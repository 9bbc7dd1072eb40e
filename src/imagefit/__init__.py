"""imagefit: from a folder of images to a tuned, reproducible, served ResNet classifier.

The public API (see `imagefit.api`): `train`, `load` (→ `Model.predict`, `Model.evaluate`), `evaluate`,
`find_lr`, `report`, `make_config`, and `ImagefitError`, the one exception a user's mistake raises.
"""

__version__ = "0.1.0"

from .api import Model, Run, evaluate, find_lr, load, make_config, report, train  # noqa: E402
from .errors import ImagefitError  # noqa: E402

__all__ = ["ImagefitError", "Model", "Run", "evaluate", "find_lr", "load", "make_config", "report", "train", "__version__"]
