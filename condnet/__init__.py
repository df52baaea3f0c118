"""condnet: EfficientNet-style classifiers with standard, SE and SE + CondConv blocks."""

from importlib.metadata import PackageNotFoundError, version

from condnet.errors import CondnetError
from condnet.models import CondNet, NetSpec, build_model, get_spec, list_models

try:
    __version__ = version("condnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["CondNet", "CondnetError", "NetSpec", "__version__", "build_model", "get_spec", "list_models"]
