"""Error types shared by every room. Apps turn them into one clear line and a non-zero exit."""


class WslError(Exception):
    """Base class of every error wsl raises on purpose."""


class ConfigError(WslError, ValueError):
    """A configuration value is unknown, of the wrong type or impossible. Raised before any work."""


class ZooFormatError(WslError):
    """A zoo on disk is malformed, corrupted, inconsistent or untrusted. The message names the file."""


class DatasetError(WslError):
    """A dataset cannot be loaded (missing files, unknown name)."""


def printable(text) -> str:
    """`text` made safe to print on one line: control characters (terminal escape codes, newlines,
    carriage returns), bidirectional overrides such as U+202E and other invisible format characters
    are written as escapes, so an untrusted file name can neither split nor rewrite a message."""
    import unicodedata

    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        if ch == "\\":
            out.append("\\\\")
        elif cat in ("Cc", "Cf", "Zl", "Zp") or (cat == "Zs" and ch != " "):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
