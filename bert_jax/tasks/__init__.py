"""Fine-tuning tasks and the registry that builds one from `config.task`.

    task = get_task(config.task)   # config.task.name in TASKS, or "package.module:MyTask"

Task modules are imported on first use, so a task whose optional dependencies are missing does not
stop the others from loading.
"""

from __future__ import annotations

import importlib
from typing import Dict, Tuple

from bert_jax.tasks.base import HEADS, Features, Task

# name -> (module, class)
TASKS: Dict[str, Tuple[str, str]] = {
    "glue": ("bert_jax.tasks.glue", "GlueTask"),
    "squad": ("bert_jax.tasks.squad", "SquadTask"),
    "ner": ("bert_jax.tasks.ner", "NerTask"),
    "swag": ("bert_jax.tasks.swag", "SwagTask"),
    "classify": ("bert_jax.tasks.classification", "TextClassificationTask"),
    "stdlib_demo": ("bert_jax.tasks.stdlib_demo", "StdlibDemoTask"),
}


def task_class(name: str) -> type:
    """The Task subclass registered as `name` (imports its module), or a user's own given as
    "package.module:ClassName"."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
    elif name in TASKS:
        module_name, class_name = TASKS[name]
    else:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)} or give 'package.module:TaskClass' "
                         "(config.task.name)")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task {name!r}: {module_name}.{class_name} is not a bert_jax.tasks.Task subclass")
    return cls


def get_task(task_config) -> Task:
    """Builds the task named `task_config.name` from its config (an ml_collections ConfigDict)."""
    name = task_config.get("name") if hasattr(task_config, "get") else None
    if not name:
        raise ValueError("config.task.name is not set; choose from " + str(sorted(TASKS)))
    return task_class(name)(task_config)


__all__ = ["HEADS", "TASKS", "Features", "Task", "get_task", "task_class"]
