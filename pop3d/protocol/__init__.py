"""The POP3 command layer: a sans-I/O session that takes bytes and returns bytes and events.

Nothing in this package reads a socket, a clock or a file. Drivers (``pop3d.server``) feed it
what the client sent, carry out the requests it makes (verify a password, open the maildrop,
stream a message, start TLS) and hand back the results.
"""
