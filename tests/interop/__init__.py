"""Interoperability tests: real third-party clients (Python poplib, curl, fetchmail, openssl
s_client) against a real pop3d-master over TCP on 127.0.0.1."""
