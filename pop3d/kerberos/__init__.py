"""What every Kerberos path shares (the GSSAPI family in ``pop3d.sasl``, KPOP in
``pop3d.kpop``, the kerberos5 password check in ``pop3d.auth``): MIT libkrb5 through a
small, fenced ctypes binding (:mod:`.mit`) and the one rule that maps a principal to a local
user (:mod:`.names`)."""
