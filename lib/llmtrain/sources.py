"""The papers and documents the notebooks cite, with the places in them that were checked.

A notebook may cite a section, table, figure, equation or algorithm of a source only where that
place is listed here in ``checked``: the text was read there (which version, in ``read``) and says
what the notebook says it does. ``tests/test_prose.py`` finds every such citation in the notebooks'
markdown and fails on a place that is not listed, or on a source that is not registered.
A source cited without a place (author, year, arXiv number) needs only its entry.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Source", "SOURCES", "find", "mentions"]


class Source(NamedTuple):
    key: str                   # how the notebooks cite it, e.g. "Narayanan et al. 2021"
    title: str
    where: str                 # venue and arXiv number
    read: str                  # the version or copy whose text was checked
    checked: tuple[str, ...]   # places checked: "§2.2.1", "Table 1", "Eq. 2", "Fig. 3", "Algorithm 1"
    aliases: tuple[str, ...] = ()  # other ways the prose names it ("arXiv 2104.04473", "the ZeRO paper")


SOURCES: tuple[Source, ...] = (
    Source("Narayanan et al. 2021",
           "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
           "SC 2021, arXiv 2104.04473",
           "full text (public transcriptions; shared/reviews/chapter-review.md §A); the layouts "
           "of Table 1 in Megatron-LM examples/sc21/run_table_1.sh @6985e589 (the commit its "
           "README names for reproducing the paper)",
           ("§2.2.1", "§2.2.2", "§3", "§3.3.2", "§4.1", "§5", "§5.1", "§5.2", "Table 1",
            "Table 2", "Eq. 2", "Eq. 3"),
           ("arXiv 2104.04473", "Megatron-LM's paper")),
    Source("Narayanan et al., ICML 2021",
           "Memory-Efficient Pipeline-Parallel DNN Training (PipeDream-Flush, PipeDream-2BW)",
           "ICML 2021, arXiv 2006.09503", "cited without a place", (), ("arXiv 2006.09503",)),
    Source("Huang et al. 2019",
           "GPipe: Efficient Training of Giant Neural Networks using Pipeline Parallelism",
           "NeurIPS 2019, arXiv 1811.06965", "cited without a place", (), ("arXiv 1811.06965", "GPipe")),
    Source("Shoeybi et al. 2019",
           "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model Parallelism",
           "arXiv 1909.08053", "full text (shared/reviews/chapter-review.md §B)", ("§3", "Fig. 3"), ("arXiv 1909.08053",)),
    Source("Korthikanti et al. 2023",
           "Reducing Activation Recomputation in Large Transformer Models",
           "MLSys 2023, arXiv 2205.05198",
           "full text (shared/reviews/chapter-review.md §B; a full-text transcription for §6, "
           "Tables 3-5, Appendix A: Eq. 7 reproduces its five MFUs to 0.1 point)",
           ("§4.1", "§4.2.2", "§6", "§6.3", "Table 3", "Table 4", "Table 5", "Appendix A",
            "Eq. 7"),
           ("arXiv 2205.05198", "Korthikanti et al.")),
    Source("Llama 3",
           "The Llama 3 Herd of Models", "arXiv 2407.21783",
           "transcriptions of v3 (Nov 2024, p. 10; shared/reviews/chapter-review.md §A) and of "
           "a copy dated July 23, 2024 (§3.3.1, Table 3, Table 4, §3.3.2); §3.3.2's context "
           "parallelism paragraph (2 × CP chunks, rank i holding i and 2CP − 1 − i; K and V "
           "all-gathered, not passed in a ring) in several transcriptions",
           ("§3.3.1", "§3.3.2", "Table 3", "Table 4", "Fig. 5"), ("arXiv 2407.21783",)),
    Source("DeepSeek-V3",
           "DeepSeek-V3 Technical Report", "arXiv 2412.19437",
           "two Markdown transcriptions of the report found by code search (§3.3: section titles, Fig. 6 and 7 captions); "
           "a page-marked transcription of §2.1.2 (Eqs. 12-20: sigmoid affinities, bias b_i for the "
           "top-K choice only, decrease/increase by the bias update speed γ, the sequence-wise balance "
           "loss) and the report's LaTeX source of §4.2 (γ = 0.001 for the first 14.3T tokens, 0.0 for "
           "the last 500B; α = 0.0001; 1 shared + 256 routed experts of width 2048, 8 activated, first "
           "three layers dense; 671B total, 37B activated); "
           "transcriptions of §3.2 (16-way PP, 64-way EP spanning 8 nodes, ZeRO-1 DP), §3.2.2 (each token "
           "dispatched to at most 4 nodes to reduce IB traffic, IB to the same in-node index then NVLink; NVLink 160 GB/s vs IB 50 GB/s; "
           "up to 13 experts = 4 nodes x 3.2 at the same cost) and §2.1.2's No Token-Dropping; "
           "a full-text transcription of §3.1 (2,048 H800, 8 per node), §3.2 (no TP), §3.2.1 with "
           "Table 2 (DualPipe: 2× parameters, PP + 1 activations), §3.2.3 (recomputation of RMSNorm "
           "and MLA up-projections, EMA in CPU) and §3.3.3 (BF16 moments; FP32 master weights and "
           "gradients)",
           ("§2.1.2", "§3.1", "§3.2", "§3.2.1", "§3.2.2", "§3.2.3", "Table 2", "§3.3", "§3.3.1", "§3.3.2", "§3.3.3", "§4.2", "Eq. 12", "Eq. 13",
            "Eq. 15", "Eq. 16", "Eq. 17", "Eq. 18", "Eq. 19", "Eq. 20", "Fig. 6", "Fig. 7"),
           ("arXiv 2412.19437", "DeepSeek-V3 technical report")),
    Source("Fedus et al. 2022",
           "Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient "
           "Sparsity", "JMLR 2022, arXiv 2101.03961",
           "a full-text transcription found by code search (§2.2 'A Differentiable Load Balancing "
           "Loss': Eqs. 4-6, loss = α·N·Σ f_i·P_i added for each Switch layer, α = 10^-2)",
           ("§2.2", "Eq. 4", "Eq. 5", "Eq. 6"), ("arXiv 2101.03961", "Switch Transformer")),
    Source("Mixtral",
           "Mixtral of Experts (Jiang, Sablayrolles, Roux, Mensch et al., Mistral AI)",
           "arXiv 2401.04088",
           "the abstract (8 experts per layer, 2 chosen per token, 47B parameters, 13B active) and a "
           "transcription of §2.1's equations found by page search (G(x) := Softmax(TopK(x·Wg)); "
           "y = Σ Softmax(Top2(x·Wg))_i·SwiGLU_i(x), K = 2), placed in §2.1 by two summaries",
           ("§2.1",), ("arXiv 2401.04088", "Mixtral of Experts")),
    Source("DeepSeek-AI 2024",
           "DeepSeek LLM: Scaling Open-Source Language Models with Longtermism", "arXiv 2401.02954",
           "two transcriptions (§2.3 Hyperparameters); two full-text transcriptions of v1 found by "
           "code search (§2.2 Table 2; §3.1 with Eq. 1 and Fig. 3's caption: near-optimal = "
           "error within 0.25 % of the minimum; §3.2 with Eq. 2 and Table 3)",
           ("§2.3", "§2.2", "§3.1", "§3.2", "Table 2", "Table 3", "Eq. 1", "Eq. 2", "Fig. 3"),
           ("arXiv 2401.02954", "DeepSeek LLM's paper")),
    Source("Chowdhery et al. 2022",
           "PaLM: Scaling Language Modeling with Pathways", "JMLR 2023, arXiv 2204.02311",
           "an arXiv-HTML transcription (§5 Training Setup); §5.1 Training Instability in two "
           "transcriptions found by code search (one of arXiv v5)",
           ("§5", "§5.1"), ("arXiv 2204.02311",)),
    Source("Zhang et al. 2022", "OPT: Open Pre-trained Transformer Language Models",
           "arXiv 2205.01068",
           "a full-text transcription found by code search (§2.5 Training Processes: loss "
           "divergences, Fig. 1's empirical learning-rate schedule, clipping lowered 1.0 -> 0.3)",
           ("§2.5", "Fig. 1"), ("arXiv 2205.01068", "OPT's paper")),
    Source("Zeng et al. 2022", "GLM-130B: An Open Bilingual Pre-trained Model",
           "ICLR 2023, arXiv 2210.02414",
           "a full-text transcription found by code search (§3 The Training Stability of "
           "GLM-130B: embedding layer gradient shrink, α = 0.1, Fig. 4)",
           ("§3", "Fig. 4"), ("arXiv 2210.02414", "GLM-130B's paper")),
    Source("Brown et al. 2020", "Language Models are Few-Shot Learners", "NeurIPS 2020, arXiv 2005.14165",
           "v4, Appendix B 'Details of Model Training' (p. 43; public transcriptions); Table 2.1 "
           "and its caption ('All models were trained for a total of 300 billion tokens'; "
           "several transcriptions found by code search)", ("Appendix B", "Table 2.1"),
           ("arXiv 2005.14165",)),
    Source("Rajbhandari et al. 2020",
           "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
           "SC 2020, arXiv 1910.02054",
           "transcriptions of the paper's text found by code search (§7 Communication Analysis of ZeRO-DP: 1.5x for P_os+g+p; Fig. 1 caption, p. 3)",
           ("§7", "Fig. 1"), ("arXiv 1910.02054", "the ZeRO paper")),
    Source("Dettmers et al. 2022", "8-bit Optimizers via Block-wise Quantization",
           "ICLR 2022, arXiv 2110.02861", "cited without a place", (), ("arXiv 2110.02861",)),
    Source("Li et al. 2023", "Memory Efficient Optimizers with 4-bit States",
           "NeurIPS 2023, arXiv 2309.01507", "cited without a place", (), ("arXiv 2309.01507",)),
    Source("Zhao et al. 2024", "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
           "ICML 2024, arXiv 2403.03507", "cited without a place", (), ("arXiv 2403.03507",)),
    Source("Luo, Yu, Li 2024", "BAdam: A Memory Efficient Full Parameter Optimization Method for LLMs",
           "arXiv 2404.02827", "cited without a place", (), ("arXiv 2404.02827",)),
    Source("Peng et al. 2023", "FP8-LM: Training FP8 Large Language Models", "arXiv 2310.18313",
           "cited without a place", (), ("arXiv 2310.18313",)),
    Source("Lv et al. 2023", "Full Parameter Fine-tuning for Large Language Models with Limited Resources",
           "arXiv 2306.09782", "cited without a place", (), ("arXiv 2306.09782",)),
    Source("McCandlish et al. 2018", "An Empirical Model of Large-Batch Training", "arXiv 1812.06162",
           "cited without a place", (), ("arXiv 1812.06162",)),
    Source("Shazeer and Stern 2018", "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
           "ICML 2018, arXiv 1804.04235", "cited without a place", (), ("arXiv 1804.04235",)),
    Source("Loshchilov and Hutter 2019", "Decoupled Weight Decay Regularization", "ICLR 2019, arXiv 1711.05101",
           "cited without a place", (), ("arXiv 1711.05101",)),
    Source("MegaScale", "MegaScale: Scaling Large Language Model Training to More Than 10,000 "
           "GPUs (Jiang et al. 2024)", "NSDI 2024, arXiv 2402.15627",
           "a full-text transcription (arXiv revision not printed): the Megatron-LM baseline "
           "rows of Table 2, Table 3's baseline, Fig. 9's bar labels",
           ("§3.3", "§6.1", "Table 1", "Table 2", "Table 3", "Fig. 9"),
           ("arXiv 2402.15627", "Jiang et al. 2024")),
    Source("Nemotron-4 15B", "Nemotron-4 15B Technical Report", "arXiv 2402.16819",
           "a full-text transcription (version not printed)", ("§2", "Table 1", "Table 2"),
           ("arXiv 2402.16819",)),
    Source("Megatron-LM README (2024)", "NVIDIA/Megatron-LM README, Training Speed and Scalability",
           "github.com/NVIDIA/Megatron-LM README.md @f2e5db40 (2024-07-15) and its "
           "images/model_table.png (Megatron-Core r0.8.0)",
           "the README text and the table image", (), ("Megatron-LM's README",)),
    Source("NVIDIA dgxc-benchmarking", "DGX Cloud benchmarking recipes (NeMo 24.09/24.11)",
           "github.com/NVIDIA/dgxc-benchmarking @35a9aec (release v24.11.1)",
           "the BF16 tables of nemotron/README_340b.md, README_15b.md, "
           "nemo_megatron/README_175b.md and their yaml files", (), ("dgxc-benchmarking",)),
    Source("BLOOM-176B README", "BigScience tr11-176B-ml training README",
           "github.com/bigscience-workshop/bigscience @9e64edec, train/tr11-176B-ml/README.md",
           "the README (hardware, layout, the log line at iteration 85,376) and its slurm file",
           (), ("BLOOM's README",)),
    Source("llm-foundry benchmarks", "MosaicML llm-foundry training benchmarks (MPT)",
           "github.com/mosaicml/llm-foundry @8c8dd48f, scripts/train/benchmarking/README.md",
           "its H100 and A100 BF16 tables and the MPT yaml files", (), ("llm-foundry",)),
    Source("Qi et al. 2024", "Zero Bubble Pipeline Parallelism", "ICLR 2024, arXiv 2401.10241", "cited without a place", (),
           ("arXiv 2401.10241",)),
    Source("Yang et al. 2022",
           "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer",
           "arXiv 2203.03466",
           "cited without a place; the rules taken from its package, github.com/microsoft/mup "
           "(README 'Basic Usage' and 'The Basic Math', mup/layer.py MuReadout, mup/optim.py "
           "MuAdam, mup/init.py constant_std_init_)",
           (), ("arXiv 2203.03466", "Tensor Programs V", "the mup package")),
    Source("Hu et al. 2024",
           "MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training "
           "Strategies", "arXiv 2404.06395",
           "cited without a place: its abstract, and the released model code (the readout's input "
           "divided by hidden_size / dim_model_base, as in vLLM's models/minicpm.py)",
           (), ("arXiv 2404.06395", "MiniCPM")),
    Source("Cerebras μP guide", "Train an LLM using Maximal Update Parameterization",
           "Cerebras documentation, docs.cerebras.net, how_to_guides/mup_docs",
           "the page's introduction: Cerebras-GPT trained in SP and μP, μTransfer from a 40M "
           "model to models up to 2.7B parameters", (), ("Cerebras-GPT",)),
    Source("Mixtral paper", "Mixtral of Experts", "arXiv 2401.04088",
           "cited without a place: its abstract (each token has access to 47B parameters, uses "
           "13B active); 46.7B / 12.9B from Mistral's release text as the model card quotes it",
           (), ("arXiv 2401.04088", "Mixtral of Experts")),
    Source("DeepSeek-V3 README", "DeepSeek-V3 README.md and README_WEIGHTS.md",
           "github.com/deepseek-ai/DeepSeek-V3 @9b4e978",
           "README.md (671B total, 37B activated; 685B on Hugging Face = 671B main model + 14B "
           "MTP module), README_WEIGHTS.md (main model 671B, 36.7B activated including 0.9B "
           "embedding and 0.9B head; MTP 11.5B unique) and inference/configs/config_671B.json",
           (), ("README_WEIGHTS.md", "config_671B.json")),
    Source("Liu et al. 2023", "Ring Attention with Blockwise Transformers for Near-Infinite Context",
           "ICLR 2024, arXiv 2310.01889",
           "cited without a place: the method as public summaries of the paper describe it "
           "(queries stay, key/value blocks pass around a ring of devices, each transfer "
           "overlapped with a block's computation); notebook 14 §2 runs our own implementation",
           (), ("arXiv 2310.01889", "Ring Attention")),
    Source("Jacobs et al. 2023", "DeepSpeed Ulysses: System Optimizations for Enabling Training of "
           "Extreme Long Sequence Transformer Models", "arXiv 2309.14509",
           "cited without a place: the method (all-to-all from sequence shards to head shards "
           "and back around attention), as notebook 14 §2 implements it",
           (), ("arXiv 2309.14509", "DeepSpeed-Ulysses")),
)


def find(name: str) -> Source | None:
    """The source whose key or one of whose aliases is ``name`` (exactly), else None."""
    for s in SOURCES:
        if name == s.key or name in s.aliases:
            return s
    return None


def mentions() -> dict[str, Source]:
    """Every name (key or alias) a notebook may use for a registered source."""
    return {n: s for s in SOURCES for n in (s.key, *s.aliases)}
