"""The recurrent cells written out in primitive ops: the graph a student reads, one node per gate op.

Each function is one time step with the signature every cell shares, ``cell(x, h, c, w_hh, b_hh)
-> (h, c)`` (``c`` is None for cells without a cell state, and a cell ignores what it does not
use); ``x`` is the step's slice of the input projection (x_t W_ih^T + biases), so only the
recurrent product is computed here.  Every op is tagged with the ``part`` of the cell it belongs
to.  ``models.cells`` holds the same math as fused ops.
"""

from __future__ import annotations

import tinygraph as tg
from tinygraph import Tensor


def rnn_cell(x: Tensor, h: Tensor, c: None, w_hh: Tensor, b_hh: Tensor | None = None) -> tuple[Tensor, None]:
    with tg.scope(part="hidden"):
        return tg.tanh(x + tg.linear(h, w_hh)), None


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    with tg.scope(part="recurrent"):
        a = x + tg.linear(h, w_hh)
    with tg.scope(part="gates"):
        ai, af, ag, ao = tg.split(a, 4, axis=1)
    with tg.scope(part="input gate"):
        i = tg.sigmoid(ai)
    with tg.scope(part="forget gate"):
        f = tg.sigmoid(af)
    with tg.scope(part="cell candidate"):
        g = tg.tanh(ag)
    with tg.scope(part="output gate"):
        o = tg.sigmoid(ao)
    with tg.scope(part="cell"):
        c = f * c + i * g
    with tg.scope(part="hidden"):
        h = o * tg.tanh(c)
    return h, c


def cifg_cell(x: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    with tg.scope(part="recurrent"):
        a = x + tg.linear(h, w_hh)
    with tg.scope(part="gates"):
        ai, ag, ao = tg.split(a, 3, axis=1)
    with tg.scope(part="input gate"):
        i = tg.sigmoid(ai)
    with tg.scope(part="cell candidate"):
        g = tg.tanh(ag)
    with tg.scope(part="output gate"):
        o = tg.sigmoid(ao)
    with tg.scope(part="cell"):
        c = (1.0 - i) * c + i * g  # the forget gate is 1 - i
    with tg.scope(part="hidden"):
        h = o * tg.tanh(c)
    return h, c


def gru_cell(x: Tensor, h: Tensor, c: None, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, None]:
    with tg.scope(part="recurrent"):
        rec = tg.linear(h, w_hh, b_hh)
    with tg.scope(part="gates"):
        xr, xz, xn = tg.split(x, 3, axis=1)
        ar, az, an = tg.split(rec, 3, axis=1)
    with tg.scope(part="reset gate"):
        r = tg.sigmoid(xr + ar)
    with tg.scope(part="update gate"):
        z = tg.sigmoid(xz + az)
    with tg.scope(part="candidate"):
        n = tg.tanh(xn + r * an)  # the reset gate scales the recurrent term including b_hn
    with tg.scope(part="hidden"):
        return n + z * (h - n), None  # (1 - z) n + z h
