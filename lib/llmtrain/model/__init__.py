"""The model: its sizes (``shapes``: one registry of presets, ``resolve``), the reference LLaMA
(``llama``) and where it recomputes (``recompute``). ``shapes`` and ``recompute`` import no torch.
"""
