"""SASL (RFC 4422) for the AUTH command (RFC 5034): one module per mechanism, a registry,
and the shared types in :mod:`pop3d.sasl.mechanism`.

Mechanisms are sans-I/O generators, like the session's command handlers: they ``yield`` a
:class:`~pop3d.sasl.mechanism.Challenge` (the session sends it and answers with the
client's decoded response) or a credential request such as
:class:`~pop3d.sasl.requests.VerifyPassword` (the driver asks the authenticator and the
mechanism receives the result), and finally ``return`` a
:class:`~pop3d.sasl.mechanism.Success` or :class:`~pop3d.sasl.mechanism.Failure`. They
never see a socket, the credential file or a clock; nonces come from the context.
"""
