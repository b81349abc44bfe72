"""tasks: small problems that test how far back a recurrent net can remember.

import tasks
result = tasks.train(tasks.make_task("adding", length=50), cell="lstm")
print(result.summary())
results = tasks.compare("copy", ["rnn", "gru"], [10, 20])
print(tasks.table(results))
tasks.plot_by_length(results, "copy.svg")
"""

from tasks.compare import compare, plot_by_length, table
from tasks.memory import TASKS, Adding, Copy, MemoryNet, Result, TaskError, make_task, train

__all__ = [
    "TASKS",
    "Adding",
    "Copy",
    "MemoryNet",
    "Result",
    "TaskError",
    "compare",
    "make_task",
    "plot_by_length",
    "table",
    "train",
]
