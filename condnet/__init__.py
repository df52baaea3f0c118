"""condnet: EfficientNet-style classifiers with standard, SE and SE + CondConv blocks."""

from condnet.deploy.fuse import fuse
from condnet.deploy.inference import prepare_inference
from condnet.errors import CondnetError
from condnet.memory import retain_freed_memory
from condnet.models import CondNet, NetSpec, build_model, get_spec, list_models
from condnet.models.layout import channels_last_weights
from condnet.version import __version__

__all__ = [
    "CondNet",
    "CondnetError",
    "NetSpec",
    "__version__",
    "build_model",
    "channels_last_weights",
    "fuse",
    "get_spec",
    "list_models",
    "load_pretrained",
    "prepare_inference",
    "retain_freed_memory",
]


def __getattr__(name: str):
    # Imported on first use: it brings in torchvision and safetensors, which `import condnet`
    # alone does not need.
    if name == "load_pretrained":
        from condnet.deploy.weights import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'condnet' has no attribute {name!r}")
