"""The ``mambaseg`` command line (``mambaseg.cli.main.main``)."""
