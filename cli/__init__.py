"""The command line: a thin layer that joins tinygraph, models, charlm and viz (``tinygraph`` or ``python -m cli``)."""
