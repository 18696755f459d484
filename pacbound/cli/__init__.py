"""The ``pacbound`` command-line tool: a thin click shell over the library."""
