"""Op classes, one local forward/backward each; ``tinygraph.functional`` wraps them."""
