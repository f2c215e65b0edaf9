"""Arithmetic you can redo: every closed form of the chapter (parameters, FLOPs, activation and
state bytes, the step's peak, the layout of the ranks, pipeline schedules, communication bytes,
the planner and the published runs). Nothing here imports torch: ``tests/test_architecture.py``
imports and runs it with torch blocked. Each formula is checked against code that runs in
``measure``, ``optim`` and ``parallel``.
"""
