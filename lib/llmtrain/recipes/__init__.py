"""The training recipe of the chapter's table (notebooks 01-03, 13): the twelve LLMs' settings
(``settings``), learning-rate schedules (``schedules``), batch schedules and gradient noise scale
(``batch``), a tiny deterministic training loop (``train``), and why the table's settings
(notebook 13): Adam with L2 vs AdamW and β₂'s memory (``optimizers``), loss spikes and clipping
(``spikes``), the batch × learning-rate grid behind DeepSeek's scaling laws (``sweep``), and μP
(``mup``).
"""
