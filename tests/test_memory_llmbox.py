"""The book authors' calculator (RUCAIBox/LLMBox, training/gpu_calculator.py), end to end."""

import pytest
from hypothesis import given, strategies as st

from llmtrain.cost import memory, params
from llmtrain.model import shapes
from llmtrain.cost.memory import GIB
from llmtrain.cost import slides as slides_formulas

S7 = shapes.get("llama-7b")
P7 = params.count(S7)
L, B, T, H, V = 32, 8, 2048, 4096, 32000


def test_llmbox_activations_are_the_slides_plus_12bth():
    slides = 2 * L * B * T * H + 12 * B * T * V
    assert slides_formulas.llmbox_activation_bytes(L, B, T, H, V) == slides + 12 * B * T * H


def test_llmbox_worked_example_zero3():
    # 16P/N, then the larger of the activations and a 2P/N gradient buffer (activations here)
    A = (12 + 2 * L) * B * T * H + 12 * B * T * V
    assert A > 2 * P7 // 2
    assert slides_formulas.llmbox_memory_bytes(P7, 2, L, B, T, H, V, zero=3) == 16 * P7 // 2 + A
    assert slides_formulas.llmbox_gpus_needed(P7, L, B, T, H, V, zero=3) == (2, 16 * P7 // 2 + A)


def test_llmbox_gradient_buffer_wins_when_activations_are_small():
    # B = T = 1: the activations are tiny, the max() picks the 16-bit gradient buffer
    P, N = 10**9, 4
    a = slides_formulas.llmbox_activation_bytes(L, 1, 1, H, V)
    assert a < 2 * P // N
    assert slides_formulas.llmbox_memory_bytes(P, N, L, 1, 1, H, V, zero=3) == 16 * P // N + 2 * P // N
    assert slides_formulas.llmbox_memory_bytes(P, N, L, 1, 1, H, V, zero=0) == 16 * P + 2 * P
    assert slides_formulas.llmbox_memory_bytes(P, N, L, 1, 1, H, V, zero=2) == 2 * P + 14 * P // N + 2 * P + 2 * P // N
    assert slides_formulas.llmbox_memory_bytes(P, N, L, 1, 1, H, V, zero=1) == 4 * P + 12 * P // N + 2 * P + 2 * P // N


@given(P=st.integers(1, 10**11), N=st.integers(2, 64), b=st.integers(1, 16), t=st.integers(1, 8192))
def test_llmbox_zero_stages_never_grow(P, N, b, t):
    m = [slides_formulas.llmbox_memory_bytes(P, N, L, b, t, H, V, zero=z) for z in range(4)]
    assert m[0] >= m[1] >= m[2] >= m[3]
    # (on one GPU its ZeRO-1/2 buffer 2P + 2P/N = 4P exceeds ZeRO-0's 2P: the formula as written)
    P1 = max(P, 10**6)  # 2P1 > the activations at B = T = 1 (695,296 B)
    one = [slides_formulas.llmbox_memory_bytes(P1, 1, L, 1, 1, H, V, zero=z) for z in range(4)]
    assert one == [18 * P1, 20 * P1, 20 * P1, 18 * P1]
    a = slides_formulas.llmbox_activation_bytes(L, b, t, H, V)
    assert m[3] == -(-(16 * P + max(2 * P, N * a)) // N)  # ceil((16P + max(2P, NA)) / N)


def test_llmbox_usable_fraction_decides():
    # 1 GPU needs 0.97 of the card: above the calculator's 95 %, so it asks for 2
    card = 80 * GIB
    P = int(0.97 * card) // 18  # 16P + the 2P gradient buffer (B = T = 1: tiny activations)
    assert slides_formulas.llmbox_activation_bytes(L, 1, 1, H, V) < 2 * P
    need1 = slides_formulas.llmbox_memory_bytes(P, 1, L, 1, 1, H, V, zero=3)
    assert 0.95 * card < need1 <= card
    assert slides_formulas.llmbox_gpus_needed(P, L, 1, 1, H, V)[0] == 2
    assert slides_formulas.llmbox_gpus_needed(P, L, 1, 1, H, V, usable=1.0) == (1, need1)


@pytest.mark.parametrize("kw,message", [
    (dict(zero=4), r"zero must be one of \(0, 1, 2, 3\), got 4"),
    (dict(zero=True), r"zero must be one of \(0, 1, 2, 3\), got True"),
    (dict(model_dtype="fp32"), "model_dtype must be one of"),
    (dict(gpus=0), "gpus must be a positive integer"),
    (dict(num_params=-1), "num_params must be a positive integer"),
])
def test_llmbox_memory_validation(kw, message):
    args = dict(num_params=P7, gpus=2, L=L, B=B, T=T, H=H, V=V) | kw
    with pytest.raises(ValueError, match=message):
        slides_formulas.llmbox_memory_bytes(**args)


@pytest.mark.parametrize("kw,message", [
    (dict(usable=0), "usable must be a positive finite number <= 1, got 0"),
    (dict(usable=1.5), "usable must be a positive finite number <= 1, got 1.5"),
    (dict(usable="95%"), "usable must be a positive finite number <= 1"),
    (dict(card_bytes=0), "card_bytes must be a positive integer"),
    (dict(max_gpus=0), "max_gpus must be a positive integer"),
    (dict(zero=0), "not enough"),  # ZeRO-0 replicates 16P + A: no number of GPUs helps
])
def test_llmbox_gpus_needed_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        slides_formulas.llmbox_gpus_needed(P7, L, B, T, H, V, **kw)
