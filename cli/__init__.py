"""The ``locseg`` command line: thin click wrappers over library functions."""
