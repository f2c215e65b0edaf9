"""The model: its sizes (``shapes``: one registry of presets, ``resolve``; ``hf_config``: reading
and writing Hugging Face configs, dense, MoE and MLA), the reference LLaMA (``llama``), its mixture-
of-experts variant (``moe``: router, top-k, shared and fine-grained experts, load balancing; equal
to transformers' Mixtral and Qwen2-MoE) and where it recomputes (``recompute``). ``shapes``,
``hf_config`` and ``recompute`` import no torch.
"""
