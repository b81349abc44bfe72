"""tinygraph: an explicit computation graph whose ops carry their own local backward.

import tinygraph as tg
x = tg.tensor([[1.0, 2.0]], requires_grad=True)
loss = tg.tanh(x @ x.T).sum()
loss.backward()          # the reverse walk of the recorded graph
x.grad
"""

from tinygraph import checkpoint, init, optim, schedules  # submodules: tg.optim, tg.init, ...
from tinygraph.backend import DEFAULT_DTYPE, DeviceError, get_array_module, get_device, set_device
from tinygraph.checkpoint import CheckpointError
from tinygraph.errors import TinygraphError
from tinygraph.functional import (
    add,
    concat,
    div,
    dropout,
    embedding,
    embedding_linear,
    exp,
    getitem,
    linear,
    log,
    log_softmax,
    matmul,
    mean,
    mul,
    neg,
    pow,
    relu,
    reshape,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    split,
    stack,
    sub,
    sum,
    tanh,
    transpose,
)
from tinygraph.gradcheck import GradcheckResult, gradcheck, gradcheck_directional
from tinygraph.graph import Graph, GraphError, Node, is_grad_enabled, no_grad, scope
from tinygraph.op import Op
from tinygraph.random import manual_seed
from tinygraph.tensor import Tensor, tensor

__all__ = [
    "CheckpointError",
    "DEFAULT_DTYPE",
    "DeviceError",
    "Graph",
    "GraphError",
    "GradcheckResult",
    "Node",
    "Op",
    "Tensor",
    "TinygraphError",
    "add",
    "checkpoint",
    "concat",
    "div",
    "dropout",
    "embedding",
    "embedding_linear",
    "exp",
    "get_array_module",
    "get_device",
    "getitem",
    "gradcheck",
    "gradcheck_directional",
    "init",
    "is_grad_enabled",
    "linear",
    "log",
    "log_softmax",
    "manual_seed",
    "matmul",
    "mean",
    "mul",
    "neg",
    "no_grad",
    "optim",
    "pow",
    "relu",
    "reshape",
    "scope",
    "schedules",
    "set_device",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "split",
    "stack",
    "sub",
    "sum",
    "tanh",
    "tensor",
    "transpose",
]
