"""The manual pages, shipped as package data; pop3d.conf.5 is generated (generate.py)."""
