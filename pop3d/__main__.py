from pop3d.cli.pop3d import entry

entry()
