"""The command line: a thin layer that joins tinygraph, models and viz."""
