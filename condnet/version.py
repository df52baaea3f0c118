"""condnet's version, as installed (the package metadata), for files and reports to record."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("condnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
