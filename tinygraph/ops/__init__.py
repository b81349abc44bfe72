"""Op classes, one local forward/backward each; ``tinygraph.functional`` wraps them."""

from tinygraph.ops._util import sigmoid  # the one NumPy/CuPy sigmoid, also used by the fused cells

__all__ = ["sigmoid"]
