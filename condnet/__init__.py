"""condnet: EfficientNet-style classifiers with standard, SE and SE + CondConv blocks.

The public names are imported on first use (`condnet.build_model` brings in torch; `import
condnet` alone does not), so the command line starts at once.
"""

from importlib import import_module

from condnet.errors import CondnetError
from condnet.version import __version__

# name -> the module that defines it
_PUBLIC = {
    "CondNet": "condnet.models",
    "NetSpec": "condnet.models",
    "build_model": "condnet.models",
    "get_spec": "condnet.models",
    "list_models": "condnet.models",
    "channels_last_weights": "condnet.models.layout",
    "fuse": "condnet.deploy.fuse",
    "prepare_inference": "condnet.deploy.inference",
    "load_pretrained": "condnet.deploy.weights",
    "retain_freed_memory": "condnet.memory",
}

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
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'condnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
