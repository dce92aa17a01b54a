"""Drivers: the only code that touches sockets, clocks, threads and files on behalf of the
sans-I/O session. ``connection`` runs one session over a channel; ``channel`` is the byte
pipe (TCP, TLS, stdio); ``worker`` accepts connections; ``master`` runs workers."""
