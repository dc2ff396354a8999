"""Direct logit attribution (circuit_repro.engine.dla): the components' shares and the
direct term add up to the model's own logit difference, on every tiny architecture."""

from __future__ import annotations

import pytest
import torch

from circuit_repro.engine.dla import direct_logit_attribution, freeze_norm, top_share
from circuit_repro.engine.forward import logits_at


def test_dla_sums_to_the_logit_difference(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 200, (6, 9), generator=generator)
    read = torch.tensor([8, 7, 8, 5, 8, 6])
    answers = torch.randint(5, 200, (6,), generator=generator)
    others = torch.randint(5, 200, (6, 3), generator=generator)
    table, per_prompt, total = direct_logit_attribution(
        loaded, tokens, read, answers, others, batch_size=4
    )
    logits = logits_at(loaded, tokens, read).double()
    expected = logits.gather(1, answers[:, None])[:, 0] - logits.gather(1, others).mean(1)
    torch.testing.assert_close(per_prompt.sum(1), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(total, expected, rtol=0, atol=1e-4)
    assert len(table) == per_prompt.shape[1]
    assert table["node"].iloc[0] == "input" and table["node"].iloc[-1] == "direct"
    # Every head (or attention layer) and MLP has a row.
    n_layers = loaded.n_layers
    assert (table["kind"] == "mlp").sum() == n_layers
    assert (table["kind"].isin(["head", "attn"])).sum() in {n_layers, n_layers * loaded.n_heads}


def test_an_unknown_norm_is_refused():
    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * torch.tanh(x)

    with pytest.raises(ValueError, match="not a LayerNorm or RMSNorm"):
        freeze_norm(Doubler(), torch.randn(3, 8))


def test_top_share_counts_the_fewest_components_reaching_the_share():
    assert top_share([5.0, 3.0, 1.0, 1.0, -4.0], share=0.8) == 2
    assert top_share([1.0, 1.0, 1.0, 1.0], share=0.8) == 4
    assert top_share([-1.0], share=0.8) == 0
