"""Command-line entry points: pop3d, pop3d-master, pop3d-admin."""
