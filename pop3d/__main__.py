from pop3d.cli import start

start.pop3d()
