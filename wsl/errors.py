"""Error types shared by every room. Apps turn them into one clear line and a non-zero exit."""


class WslError(Exception):
    """Base class of every error wsl raises on purpose."""


class ConfigError(WslError, ValueError):
    """A configuration value is unknown, of the wrong type or impossible. Raised before any work."""


class ZooFormatError(WslError):
    """A zoo on disk is malformed, corrupted, inconsistent or untrusted. The message names the file."""


class DatasetError(WslError):
    """A dataset cannot be loaded (missing files, unknown name)."""
