"""The installed package's version (recorded in every module's provenance)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf_modular")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
