"""smtpfront: a high-throughput SMTP/LMTP receiving front end."""

from ._version import __version__

__all__ = ["__version__"]
