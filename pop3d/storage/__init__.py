"""Maildrops behind a narrow interface: open (lock + snapshot listing), measure, open one
message, commit deletions, close. Maildir is the one backend today; the interface admits an
mbox or a remote store later."""
