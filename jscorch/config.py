"""``jscorch.config``: process-wide settings (see :mod:`jscorch.primitives.settings`)."""
from jscorch.primitives.settings import LOWERINGS as LOWERINGS
from jscorch.primitives.settings import settings as config

__all__ = ["config", "LOWERINGS"]
