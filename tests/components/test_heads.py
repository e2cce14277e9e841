"""attention_heads: per-head masks for every supported layout, checked structurally and
through each model's own forward pass.

Functional criterion (float64): perturb only the entries of one head's component with
random noise. Let z be the input of the attention module's output projection (the heads'
outputs concatenated, head h in features [h*d, (h+1)*d)) and y the module's output.
Then (1) the blocks of z of heads outside the expected set S (the head itself; with
grouped-query K/V sharing, its whole K/V group) are unchanged, the head's own block does
change; (2) the change of y equals the change of the out projection applied to z with
every block outside S zeroed and the shared output bias removed. (2) fails if the head's
mask touched another head's output columns or the output bias.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_devinterp.components import Component, attention_heads
from lightning_devinterp.demos.attention_only import AttentionOnlyTransformer

transformers = pytest.importorskip("transformers")

VOCAB = 50


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


class Probe:
    """How to read one attention module's z and y while the whole model runs."""

    def __init__(
        self,
        attention: nn.Module,
        n_heads: int,
        d_head: int,
        capture: Callable[[Callable[[], object]], tuple[torch.Tensor, torch.Tensor]],
        project: Callable[[torch.Tensor], torch.Tensor],
        shared: tuple[str, ...],
    ) -> None:
        self.attention, self.n_heads, self.d_head = attention, n_heads, d_head
        self.capture, self.project, self.shared = capture, project, shared


def hooked_probe(
    attention: nn.Module, out: nn.Module, n_heads: int, d_head: int, shared: tuple[str, ...]
) -> Probe:
    """z from a forward pre-hook on the output projection module ``out``; ``shared``: name
    suffixes of the parameters no head owns."""

    def capture(run: Callable[[], object]) -> tuple[torch.Tensor, torch.Tensor]:
        zs, ys = [], []
        hooks = [
            out.register_forward_pre_hook(lambda m, args: zs.append(args[0].detach().clone())),
            attention.register_forward_hook(
                lambda m, args, o: ys.append(_first(o).detach().clone())
            ),
        ]
        try:
            with torch.no_grad():
                run()
        finally:
            for hook in hooks:
                hook.remove()
        assert len(zs) == len(ys) == 1
        return zs[0], ys[0]

    return Probe(attention, n_heads, d_head, capture, out, shared)


def mha_probe(attention: nn.MultiheadAttention) -> Probe:
    """``nn.MultiheadAttention`` never calls ``out_proj`` as a module: read z by running
    the module with an identity output projection (its output is then z)."""
    proj = attention.out_proj

    def capture(run: Callable[[], object]) -> tuple[torch.Tensor, torch.Tensor]:
        ys = []
        hook = attention.register_forward_hook(
            lambda m, args, o: ys.append(_first(o).detach().clone())
        )
        saved = proj.weight.detach().clone(), proj.bias.detach().clone()
        try:
            run()
            with torch.no_grad():
                proj.weight.copy_(torch.eye(proj.weight.shape[0], dtype=proj.weight.dtype))
                proj.bias.zero_()
            run()
        finally:
            hook.remove()
            with torch.no_grad():
                proj.weight.copy_(saved[0])
                proj.bias.copy_(saved[1])
        return ys[1], ys[0]

    def project(z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, proj.weight, proj.bias)

    return Probe(
        attention, attention.num_heads, attention.head_dim, capture, project, ("out_proj.bias",)
    )


class TinyLensAttention(nn.Module):
    """TransformerLens-style causal attention: W_Q/W_K/W_V [H, E, d], W_O [H, d, E]."""

    def __init__(self, d_model: int = 16, n_heads: int = 4, d_head: int = 3, n_kv: int = 0):
        super().__init__()
        n_kv = n_kv or n_heads
        grouped = n_kv != n_heads
        k, v = ("_W_K", "_W_V") if grouped else ("W_K", "W_V")

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) / shape[-2] ** 0.5)

        self.W_Q = param(n_heads, d_model, d_head)
        self.register_parameter(k, param(n_kv, d_model, d_head))
        self.register_parameter(v, param(n_kv, d_model, d_head))
        self.W_O = param(n_heads, d_head, d_model)
        self.b_Q = nn.Parameter(0.1 * torch.randn(n_heads, d_head))
        self.register_parameter(k.replace("W", "b"), nn.Parameter(0.1 * torch.randn(n_kv, d_head)))
        self.register_parameter(v.replace("W", "b"), nn.Parameter(0.1 * torch.randn(n_kv, d_head)))
        self.b_O = nn.Parameter(0.1 * torch.randn(d_model))
        self.hook_z = nn.Identity()
        self.k, self.v, self.group = k, v, n_heads // n_kv

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_O.flatten(0, 1) + self.b_O

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_k, w_v = getattr(self, self.k), getattr(self, self.v)
        b_k, b_v = getattr(self, self.k.replace("W", "b")), getattr(self, self.v.replace("W", "b"))
        q = torch.einsum("bpe,hed->bhpd", x, self.W_Q) + self.b_Q[:, None]
        k = (torch.einsum("bpe,hed->bhpd", x, w_k) + b_k[:, None]).repeat_interleave(self.group, 1)
        v = (torch.einsum("bpe,hed->bhpd", x, w_v) + b_v[:, None]).repeat_interleave(self.group, 1)
        length = x.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~causal, -torch.inf)
        z = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        return self.project(self.hook_z(z))


class TinyLens(nn.Module):
    def __init__(self, n_kv: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.blocks = nn.ModuleList(TinyLensAttention(n_kv=n_kv) for _ in range(2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = x + block(x)
        return x


def lens_probe(attention: TinyLensAttention) -> Probe:
    probe = hooked_probe(attention, attention.hook_z, *attention.W_Q.shape[::2], ("b_O",))
    probe.project = attention.project
    return probe


# --- the architectures -----------------------------------------------------------------


def tokens(batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def build_mha() -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    model = nn.MultiheadAttention(12, 3).double()
    x = torch.randn(5, 2, 12, dtype=torch.float64)
    return model, lambda: model(x, x, x), [mha_probe(model)]


def build_mha_kdim() -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    model = nn.MultiheadAttention(12, 4, kdim=5, vdim=7, add_bias_kv=True, batch_first=True)
    model.double()
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 6, d, dtype=torch.float64, generator=g) for d in (12, 5, 7))
    assert not model._qkv_same_embed_dim
    return model, lambda: model(q, k, v), [mha_probe(model)]


def build_attention_only() -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    model = AttentionOnlyTransformer(VOCAB, d_model=16, n_heads=4, n_layers=2, context=8).double()
    x = tokens()
    return model, lambda: model(x), [mha_probe(m) for m in model.layers]


def build_lightning_demo() -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    from lightning.pytorch.demos import Transformer

    model = Transformer(vocab_size=VOCAB, ninp=16, nhead=2, nhid=16, nlayers=2, dropout=0.0)
    model.double()
    src, tgt = tokens(), tokens().flip(-1)
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return model, lambda: model(src, tgt), [mha_probe(m) for m in attention]


def build_gpt2(cross: bool = False) -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
        eos_token_id=0, attn_implementation="eager", add_cross_attention=cross,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).double().eval()
    x = tokens()
    encoder = torch.randn(2, 4, 32, dtype=torch.float64)
    run = (lambda: model(x, encoder_hidden_states=encoder)) if cross else (lambda: model(x))
    modules = [m for m in model.modules() if type(m).__name__ == "GPT2Attention"]
    return model, run, [hooked_probe(m, m.c_proj, 4, 8, ("c_proj.bias",)) for m in modules]


def build_neox() -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=16, attention_bias=True,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.GPTNeoXForCausalLM(config).double().eval()
    x = tokens()
    modules = [layer.attention for layer in model.gpt_neox.layers]
    return (
        model,
        lambda: model(x),
        [hooked_probe(m, m.dense, 4, 8, ("dense.bias",)) for m in modules],
    )


def build_bloom() -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    config = transformers.BloomConfig(n_layer=2, n_head=4, hidden_size=32, vocab_size=VOCAB)
    model = transformers.BloomForCausalLM(config).double().eval()
    x = tokens()
    modules = [block.self_attention for block in model.transformer.h]
    return (
        model,
        lambda: model(x),
        [hooked_probe(m, m.dense, 4, 8, ("dense.bias",)) for m in modules],
    )


def build_llama(n_kv: int = 2) -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    config = transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=n_kv, hidden_size=32,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=16,
        attention_bias=True, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).double().eval()
    x = tokens()
    modules = [layer.self_attn for layer in model.model.layers]
    return (
        model,
        lambda: model(x),
        [hooked_probe(m, m.o_proj, 4, 8, ("o_proj.bias",)) for m in modules],
    )


def build_lens(n_kv: int = 0) -> tuple[nn.Module, Callable[[], object], list[Probe]]:
    torch.manual_seed(0)
    model = TinyLens(n_kv=n_kv).double()
    x = tokens()
    return model, lambda: model(x), [lens_probe(m) for m in model.blocks]


# name: (builder, key/value heads per layer when grouped (None: one per query head))
CASES: dict[str, tuple[Callable[[], tuple], int | None]] = {
    "mha": (build_mha, None),
    "mha_kdim_bias_kv": (build_mha_kdim, None),
    "attention_only_demo": (build_attention_only, None),
    "lightning_demo": (build_lightning_demo, None),
    "gpt2": (build_gpt2, None),
    "gpt2_cross": (lambda: build_gpt2(cross=True), None),
    "gpt_neox": (build_neox, None),
    "bloom": (build_bloom, None),
    "llama": (lambda: build_llama(4), None),
    "llama_gqa": (build_llama, 2),
    "llama_mqa": (lambda: build_llama(1), 1),
    "lens": (build_lens, None),
    "lens_gqa": (lambda: build_lens(2), 2),
}


def attention_params(probe: Probe, model: nn.Module) -> dict[str, nn.Parameter]:
    ids = {id(p) for p in probe.attention.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) in ids}


def is_key_value(pname: str) -> bool:
    module, _, leaf = pname.rpartition(".")
    return module.endswith(("k_proj", "v_proj")) or leaf.lstrip("_") in ("W_K", "W_V", "b_K", "b_V")


def kv_group(head: int, n_heads: int, n_kv: int | None) -> set[int]:
    if n_kv is None:
        return {head}
    size = n_heads // n_kv
    return set(range(head // size * size, (head // size + 1) * size))


# --- structure --------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_masks_partition_each_attention_module(case: str) -> None:
    build, n_kv = CASES[case]
    model, _, probes = build()
    components = attention_heads(model)
    assert [c.name for c in components] == [
        f"l{layer}h{h}" for layer, probe in enumerate(probes) for h in range(probe.n_heads)
    ]
    by_name = {c.name: c for c in components}
    all_params = dict(model.named_parameters())
    for layer, probe in enumerate(probes):
        params = attention_params(probe, model)
        heads = [by_name[f"l{layer}h{h}"] for h in range(probe.n_heads)]
        for h, head in enumerate(heads):
            head.validate(model)
            assert head.group == f"l{layer}"
            assert set(head.masks) <= set(params), "a head owns a parameter outside its module"
            for pname, mask in head.masks.items():
                assert mask.dtype == torch.bool and mask.device == all_params[pname].device
                assert not pname.endswith(probe.shared), f"{pname} is shared by all heads"
            for g in range(h + 1, probe.n_heads):
                for pname in set(head.masks) & set(heads[g].masks):
                    overlap = head.masks[pname] & heads[g].masks[pname]
                    if g in kv_group(h, probe.n_heads, n_kv):
                        # grouped K/V: query heads of one group share exactly their K/V slices
                        assert not overlap.any() or is_key_value(pname), pname
                    else:
                        assert not overlap.any(), f"heads {h} and {g} overlap on {pname}"
        for pname, param in params.items():
            covered = torch.zeros_like(param, dtype=torch.bool)
            for head in heads:
                if pname in head.masks:
                    covered |= head.masks[pname]
            if pname.endswith(probe.shared):
                assert not covered.any()
            else:
                assert covered.all(), f"{pname}: {int((~covered).sum())} entries owned by no head"


def test_gpt2_layout_explicitly() -> None:
    model, _, _ = build_gpt2()
    head = {c.name: c for c in attention_heads(model)}["l1h2"]
    prefix = "transformer.h.1.attn."
    assert set(head.masks) == {
        prefix + n for n in ("c_attn.weight", "c_attn.bias", "c_proj.weight")
    }
    expected = torch.zeros(32, 96, dtype=torch.bool)
    for block in range(3):  # q, k, v blocks of 32 columns, head 2 = columns 16:24 of each
        expected[:, block * 32 + 16 : block * 32 + 24] = True
    assert torch.equal(head.masks[prefix + "c_attn.weight"], expected)
    assert torch.equal(head.masks[prefix + "c_attn.bias"], expected[0])
    rows = torch.zeros(32, 32, dtype=torch.bool)
    rows[16:24] = True
    assert torch.equal(head.masks[prefix + "c_proj.weight"], rows)


def test_neox_layout_is_interleaved() -> None:
    model, _, _ = build_neox()
    head = {c.name: c for c in attention_heads(model)}["l0h1"]
    mask = head.masks["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert mask[24:48].all() and mask.sum() == 24 * 32
    assert head.masks["gpt_neox.layers.0.attention.dense.weight"][:, 8:16].all()


def test_lightning_demo_layer_order() -> None:
    model, _, _ = build_lightning_demo()
    groups: dict[str, set[str]] = {}
    for c in attention_heads(model):
        groups.setdefault(c.group, set()).update(
            n.removesuffix(".out_proj.weight")
            .removesuffix("_proj_weight")
            .removesuffix("_proj_bias")
            .removesuffix(".in")
            for n in c.masks
        )
    assert groups == {
        "l0": {"transformer.encoder.layers.0.self_attn"},
        "l1": {"transformer.encoder.layers.1.self_attn"},
        "l2": {"transformer.decoder.layers.0.self_attn"},
        "l3": {"transformer.decoder.layers.0.multihead_attn"},
        "l4": {"transformer.decoder.layers.1.self_attn"},
        "l5": {"transformer.decoder.layers.1.multihead_attn"},
    }


def test_gqa_exclude_gives_shared_kv_to_nobody() -> None:
    model, _, _ = build_llama(2)
    shared = {c.name: c for c in attention_heads(model)}
    excluded = {c.name: c for c in attention_heads(model, kv_sharing="exclude")}
    prefix = "model.layers.0.self_attn."
    assert shared["l0h0"].masks[prefix + "k_proj.weight"][:8].all()
    assert torch.equal(
        shared["l0h1"].masks[prefix + "v_proj.weight"],
        shared["l0h0"].masks[prefix + "v_proj.weight"],
    )
    assert set(excluded["l0h0"].masks) == {
        prefix + n for n in ("q_proj.weight", "q_proj.bias", "o_proj.weight")
    }
    for name, comp in excluded.items():
        for pname, mask in comp.masks.items():
            assert torch.equal(mask, shared[name].masks[pname])
    # without grouping the two options agree
    model, _, _ = build_llama(4)
    a, b = attention_heads(model), attention_heads(model, kv_sharing="exclude")
    assert all(
        x.masks.keys() == y.masks.keys()
        and all(torch.equal(x.masks[k], y.masks[k]) for k in x.masks)
        for x, y in zip(a, b, strict=True)
    )
    with pytest.raises(ValueError, match="kv_sharing"):
        attention_heads(model, kv_sharing="nobody")  # type: ignore[arg-type]


# --- function ---------------------------------------------------------------------------


def perturb(model: nn.Module, masks: dict[str, torch.Tensor], seed: int) -> None:
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, mask in masks.items():
            noise = torch.randn(mask.shape, generator=g, dtype=params[pname].dtype)
            params[pname].add_(0.5 * noise * mask)


def check_head_locality(
    model: nn.Module,
    run: Callable[[], object],
    probe: Probe,
    masks: dict[str, torch.Tensor],
    head: int,
    expected: set[int],
) -> None:
    """Perturb ``masks``: only z blocks in ``expected`` move, y moves by their projection."""
    d = probe.d_head
    keep = torch.zeros(probe.n_heads * d, dtype=torch.float64)
    for h in expected:
        keep[h * d : (h + 1) * d] = 1.0
    z0, y0 = probe.capture(run)
    with torch.no_grad():
        before = probe.project(z0 * keep) - probe.project(torch.zeros_like(z0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        perturb(model, masks, seed=head)
        z1, y1 = probe.capture(run)
        with torch.no_grad():
            after = probe.project(z1 * keep) - probe.project(torch.zeros_like(z1))
    finally:
        model.load_state_dict(state)
    blocks = (z1 - z0).abs().unflatten(-1, (probe.n_heads, d)).amax(dim=(-1, *range(z0.dim() - 1)))
    others = [h for h in range(probe.n_heads) if h not in expected]
    assert blocks[head] > 1e-3, "perturbing the head did not change its output"
    if others:
        assert blocks[others].max() < 1e-12, f"head {head} changed heads {blocks.tolist()}"
    torch.testing.assert_close(y1 - y0, after - before, rtol=1e-9, atol=1e-11)
    assert (y1 - y0).abs().max() > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_perturbing_a_head_changes_only_that_head(case: str) -> None:
    build, n_kv = CASES[case]
    model, run, probes = build()
    components = {c.name: c for c in attention_heads(model)}
    for layer, probe in enumerate(probes):
        for h in range(probe.n_heads):
            masks = dict(components[f"l{layer}h{h}"].masks)
            check_head_locality(model, run, probe, masks, h, kv_group(h, probe.n_heads, n_kv))
    if n_kv is not None:  # the head's own part (K/V excluded) moves that head alone
        excluded = {c.name: c for c in attention_heads(model, kv_sharing="exclude")}
        for layer, probe in enumerate(probes):
            for h in range(probe.n_heads):
                masks = dict(excluded[f"l{layer}h{h}"].masks)
                check_head_locality(model, run, probe, masks, h, {h})


# --- other models, wrappers, devices, errors --------------------------------------------


def test_names_follow_a_wrapping_module() -> None:
    import lightning as L

    class Wrapper(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = AttentionOnlyTransformer(VOCAB, d_model=8, n_heads=2, n_layers=1)

    wrapper = Wrapper()
    components = attention_heads(wrapper)
    assert [c.name for c in components] == ["l0h0", "l0h1"]
    assert set(components[0].masks) == {
        "model.layers.0.in_proj_weight",
        "model.layers.0.in_proj_bias",
        "model.layers.0.out_proj.weight",
    }


def test_masks_follow_the_parameter_device_and_bias_free_layers() -> None:
    model = nn.MultiheadAttention(8, 2, bias=False, device="meta")
    components = attention_heads(model)
    assert set(components[0].masks) == {"in_proj_weight", "out_proj.weight"}
    assert all(
        m.device.type == "meta" and m.dtype == torch.bool for m in components[0].masks.values()
    )


def test_custom_q_k_v_o_module_with_head_attribute() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_heads, self.head_dim = 2, 4
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(6, 8) for _ in range(3))
            self.out_proj = nn.Linear(8, 6)

    model = nn.Sequential(nn.Linear(6, 6), Attention())
    components = attention_heads(model)
    assert [c.name for c in components] == ["l0h0", "l0h1"]
    assert components[1].masks["1.out_proj.weight"][:, 4:].all()
    assert components[1].masks["1.out_proj.weight"].sum() == 24


def test_inconsistent_recognised_attention_raises() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_heads = 3
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(6, 8) for _ in range(3))
            self.o_proj = nn.Linear(8, 6)

    with pytest.raises(ValueError, match="do not match 3 query heads"):
        attention_heads(Attention())

    class Headless(Attention):
        def __init__(self) -> None:
            super().__init__()
            del self.num_heads

    with pytest.raises(ValueError, match="no head count"):
        attention_heads(Headless())


def test_unrecognised_model_raises_with_guidance() -> None:
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError) as info:
        attention_heads(mlp)
    message = str(info.value)
    for hint in ("MultiheadAttention", "W_Q", "c_attn", "query_key_value", "q_proj", "o_proj"):
        assert hint in message
    assert "Component.from_patterns(model, 'layers.0.attn.*')" in message
    assert "Component('l0h0'" in message
    assert Component.from_patterns(mlp, "0.*").numel() == 40
