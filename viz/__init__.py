"""Pictures of what tinygraph computes: unrolled graphs as SVG, loss curves and gradient flow as plots."""

from viz.loss_plot import plot_losses

__all__ = ["plot_losses"]
