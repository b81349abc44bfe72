"""Pictures of what tinygraph computes: unrolled graphs as SVG, loss curves and gradient flow as plots."""

from viz.bptt_graph import GraphRenderError, GraphvizMissingError, build_drawing, render_graph, to_dot
from viz.gradflow import GradientFlowError, gradient_norms, hidden_gradients, plot_gradient_flow
from viz.loss_plot import plot_losses

__all__ = [
    "GradientFlowError",
    "GraphRenderError",
    "GraphvizMissingError",
    "build_drawing",
    "gradient_norms",
    "hidden_gradients",
    "plot_gradient_flow",
    "plot_losses",
    "render_graph",
    "to_dot",
]
