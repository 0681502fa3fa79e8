"""The sans-IO SMTP/LMTP engine: bytes in, events out; replies in, bytes out."""
