"""The built-in plugins and the plugin loader (``[[plugins]]``, ``[auth] backend``, ``[policy]``).

- ``registry``: ``use = "package.module:Factory"`` or a registered name (entry-point group
  ``smtpfront.plugins``) → a :class:`~smtpfront.hooks.Hooks` built with ``options``.
- ``passwords``: the credentials file's schemes (argon2id, bcrypt, SCRAM-SHA-256, plain).
- ``auth_file``: ``auth-file``, AUTH checked against that file.
- ``auth_dovecot``: ``auth-dovecot``, AUTH checked by Dovecot's auth service.
- ``relay``: ``relay-policy``, recipients outside the local domains only for trusted clients.
- ``limits``: ``client-limits``, per-client connection, rate and AUTH-failure limits (Postfix's
  anvil) over a counter store; ``limits_local``: that store in a file shared by the host's
  workers (the Redis one is ``sink/redis/limits.py``, passed in by the assembly).

Rule (import-linter): policy imports hooks, config and core; never aio, server, supervisor,
assembly or a sink. The assembly builds the chain from it.
"""
