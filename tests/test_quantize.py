"""Weight-only quantisation of the DiT's block linears (`tokentrim.wan.quantize`, torchao): what is stored, what it
does to the output, and the modes that cannot run here."""

import pytest
import torch
from torch import nn

from tokentrim.errors import UserError
from tokentrim.wan import build_model, get_preset
from tokentrim.wan.quantize import check_quantize, quantize_dit, weight_bytes

pytest.importorskip("torchao")
C = get_preset("tiny")


def call(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    context = model.encode_context(torch.randn(1, 9, C.text_dim, generator=gen))
    x = torch.randn(1, 3, C.in_dim, C.latent_height, C.latent_width, generator=gen)
    with torch.no_grad():
        return model(x, torch.full((1, 3), 700.0), context)


def test_int8_stores_one_byte_per_weight_of_the_block_linears():
    model = build_model(C, seed=3)
    linears = [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    rows = sum(m.weight.shape[0] for m in linears)
    weights = sum(m.weight.numel() for m in linears)
    before = weight_bytes(model)
    quantize_dit(model, "int8")
    # fp32 weights (4 bytes) -> int8 (1 byte) + one fp32 scale and one int8 zero point per output row
    assert weight_bytes(model) == before - 3 * weights + 5 * rows
    assert model.patch_embedding.weight.dtype == torch.float32  # outside the blocks: untouched
    assert type(model.text_embedding[0].weight) is nn.Parameter


def test_int8_changes_the_output_by_its_rounding_only():
    reference = call(build_model(C, seed=3))
    got = call(quantize_dit(build_model(C, seed=3), "int8"))
    error = (got - reference).norm() / reference.norm()
    assert 0 < error < 2e-2  # 8-bit weights with per-row scales: a few per mille on a random 2-layer model


def test_none_leaves_the_model_as_it_is():
    model = build_model(C, seed=3)
    before = call(model)
    assert torch.equal(call(quantize_dit(model, "none")), before)


def test_modes_that_cannot_run_here_are_user_errors():
    with pytest.raises(UserError, match="compute capability 8.9"):
        check_quantize("fp8", torch.device("cpu"))
    with pytest.raises(UserError, match="`quantize` must be one of"):
        check_quantize("int4", torch.device("cpu"))
