"""Configuration: imapd.conf (options, typed, with service prefixes) and cyrus.conf
(the master's services). Parsers are strict and report file:line."""
