"""KPOP: POP3 after a Kerberos 5 ``krb5_sendauth`` handshake (``pop3d -k``, port 1109).

* :mod:`pop3d.kpop.handshake`: the pre-greeting handshake, sans I/O (bytes in, bytes and
  one result out; trailing bytes go to the POP3 session);
* :mod:`pop3d.kerberos.mit`: the AP-REQ check, a fenced ctypes binding to MIT libkrb5, run by
  the driver off the event loop (the handshake yields it as an Offload);
* :mod:`pop3d.kerberos.names`: principal -> local user;
* :mod:`pop3d.kpop.service`: the acceptor of ``pop3d -k``, checked at service start.

What KPOP protects (SECURITY.md, "KPOP"): the login only. The client proves its Kerberos
identity with a ticket for ``pop/<host>``, and with mutual authentication (fetchmail always
asks) the server proves it holds that service key; MIT's replay cache refuses a captured
AP-REQ sent again, and the ticket's lifetime and the clock skew bound when it can be used.
An AP-REQ made for another protocol (its authenticator carries a checksum, as every GSSAPI
token's does) is refused: it must not buy a session without the protection it was made for.
Nothing binds the POP3 stream that follows to that exchange (fetchmail sends no checksum,
subkey or sequence number), and the stream is not encrypted: anyone who can read the network
reads the mail, and anyone on the path can take over the connection after the handshake.
fetchmail cannot run KPOP inside TLS. The service is therefore off unless configured, and is
for loopback or trusted networks, as a legacy bridge.

The verification runs MIT krb5's own code through ctypes; the reasons for that choice over
python-gssapi, pykrb5, a pure-Python verifier or ``krb5_recvauth`` are in
:mod:`pop3d.kerberos.mit`.
"""
