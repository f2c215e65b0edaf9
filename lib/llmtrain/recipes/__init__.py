"""The training recipe of the chapter's table (notebooks 01-03): the twelve LLMs' settings
(``settings``), learning-rate schedules (``schedules``), batch schedules and gradient noise scale
(``batch``), and a tiny deterministic training loop (``train``).
"""
