"""Fixtures of the policy tests: a real ``smtpfront serve`` (``served``)."""

from .support import served

__all__ = ["served"]
