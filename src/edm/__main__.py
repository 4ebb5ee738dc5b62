from edm.cli.main import run

run()
