"""pop3d: a security-focused POP3 server, a modern reference implementation of Cyrus pop3d(8).

Layers, bottom up: ``server`` drivers and transport (plain, TLS) -> ``security`` policy and
``auth`` identity -> ``protocol`` (the sans-I/O POP3 session); ``storage`` (Maildir) and
``config`` (imapd.conf, cyrus.conf) sit beside them.
"""

__version__ = "0.1.0"
IMPLEMENTATION = f"pop3d {__version__}"
