"""Security primitives shared by every layer: secrets that cannot leak, and the one policy
that decides what a connection may do."""
