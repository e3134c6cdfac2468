"""U-ViT model: parity with the official code, exact layouts, fast paths."""

import json

import pytest
import torch
from numerics import MODEL_EXACT_ULPS, MODEL_ULPS, TIMESTEP_EMBEDDING_ULPS, assert_ulps
from parity import GOLDEN_MODELS, exact_model_ulps, load_golden, model_ulps, timestep_embedding_ulps
from safetensors.torch import load_file

import uvit.model as M
from uvit.config import PRESETS, build_model, get_preset
from uvit.model import UViT, UViTT2I, count_parameters, patchify, unpatchify

GOLDEN = list(GOLDEN_MODELS)


@pytest.mark.parity
@pytest.mark.parametrize("name", GOLDEN)
def test_forward_matches_official_golden(name):
    ulps = model_ulps(M, name)
    assert_ulps(ulps["output"], MODEL_ULPS, f"{name} output")
    # The golden timesteps mix integers and fractions: the model must not round them.
    _, tensors = load_golden(name)
    assert not torch.equal(tensors["input.timesteps"], tensors["input.timesteps"].round())


@pytest.mark.parity
@pytest.mark.parametrize("name", GOLDEN)
def test_intermediates_match_official(name):
    ulps = model_ulps(M, name)
    assert len(ulps) >= 6, sorted(ulps)  # every block, the final norm and the head were compared
    for key, value in ulps.items():
        assert_ulps(value, MODEL_ULPS, f"{name} {key}")


@pytest.mark.parity
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_is_our_architecture_evaluated_exactly(name):
    # Machine independent: float64 evaluation of our modules with the golden's weights differs from
    # the official float32 run by that run's own rounding only.
    for key, value in exact_model_ulps(M, name).items():
        assert_ulps(value, MODEL_EXACT_ULPS, f"{name} {key} against float64")


@pytest.mark.parity
def test_text_golden_pins_the_official_token_order():
    # [time, context x N, patches]: the context embedding comes after the time token.
    _, tensors = load_golden("c_text_latent")
    kwargs, _ = load_golden("c_text_latent")
    assert tensors["input.context"].shape[1:] == (kwargs["num_clip_token"], kwargs["clip_dim"])
    assert kwargs["mlp_time_embed"] is True  # the time MLP is exercised as well


@pytest.mark.parity
def test_layer_norms_use_the_official_eps():
    # eps 1e-6 moves the golden's block activations by ~100 ulps, inside MODEL_ULPS on its own.
    model = _tiny_model()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 5 + 1
    assert all(m.eps == 1e-5 and m.elementwise_affine for m in norms)


@pytest.mark.parity
def test_timestep_embedding_matches_official():
    assert_ulps(timestep_embedding_ulps(M), TIMESTEP_EMBEDDING_ULPS, "timestep_embedding")


@pytest.mark.parity
def test_patchify_unpatchify_match_official(official_data):
    t = load_file(str(official_data / "timestep_embedding_and_patchify.safetensors"))
    tags = sorted({k.split(".")[1] for k in t if k.startswith("patchify.")})
    assert len(tags) >= 4
    for tag in tags:
        p = int(tag.split("_p")[1])
        channels = int(tag.split("_C")[1].split("_")[0])
        assert torch.equal(patchify(t[f"patchify.{tag}.input"], p), t[f"patchify.{tag}.output"]), tag
        assert torch.equal(unpatchify(t[f"unpatchify.{tag}.input"], channels), t[f"unpatchify.{tag}.output"]), tag


def test_unpatchify_rejects_wrong_shape():
    with pytest.raises(ValueError, match="cannot unpatchify"):
        unpatchify(torch.zeros(1, 15, 12), 3)


@pytest.mark.parity
@pytest.mark.parametrize("name", [p for p in PRESETS if PRESETS[p].official_config])
def test_official_config_param_count_and_state_dict(official_data, name):
    preset = PRESETS[name]
    configs = json.loads((official_data / "official_configs.json").read_text())["configs"]
    shapes = json.loads((official_data / "official_state_dict_shapes.json").read_text())["configs"]
    official = preset.official_config
    with torch.device("meta"):
        model = build_model(preset)
    assert count_parameters(model) == configs[official]["official_param_count"] == preset.official_param_count
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == shapes[official]["state_dict"]
    # The preset's nnet kwargs are the official ones, verbatim.
    resolved = configs[official]["nnet_resolved_with_class_defaults"]
    kwargs = preset.model.nnet_kwargs()
    for key, value in resolved.items():
        if key != "norm_layer":
            assert kwargs[key] == value, key


@pytest.mark.parity
def test_official_nnet_kwargs_accepted_verbatim(official_data):
    configs = json.loads((official_data / "official_configs.json").read_text())["configs"]
    for name, cfg in configs.items():
        kwargs = {k: v for k, v in cfg["nnet"].items() if k != "name"}
        cls = UViTT2I if "clip_dim" in cfg["nnet_resolved_with_class_defaults"] else UViT
        with torch.device("meta"):
            model = cls(**kwargs)
        assert count_parameters(model) == cfg["official_param_count"], name


def _tiny_model(**overrides):
    kwargs = dict(img_size=8, patch_size=2, in_chans=4, embed_dim=64, depth=4, num_heads=4, num_classes=11)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return UViT(**kwargs)


def _inputs(batch=3, channels=4, size=8, classes=11):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    y = torch.randint(0, classes, (batch,), generator=g)
    return x, t, y


def test_text_model_tokens_and_shapes():
    torch.manual_seed(0)
    model = UViTT2I(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2, clip_dim=16,
                    num_clip_token=5)  # fmt: skip
    x = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 5, 16)
    out = model(x, torch.tensor([3.0, 500.5]), context)
    assert out.shape == x.shape
    assert model.pos_embed.shape == (1, 1 + 5 + 16, 32)
    # The context must matter.
    out2 = model(x, torch.tensor([3.0, 500.5]), context + 1)
    assert not torch.allclose(out, out2)
    with pytest.raises(ValueError, match="context must be"):
        model(x, torch.tensor([3.0, 5.0]), torch.randn(2, 4, 16))


def test_class_model_requires_labels_and_label_token_first():
    model = _tiny_model().eval()
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)
    with torch.no_grad():
        a = model(x, t, y)
        b = model(x, t, (y + 1) % 11)
    assert not torch.allclose(a, b)


def test_scalar_timestep_broadcasts():
    model = _tiny_model().eval()
    x, _, y = _inputs()
    with torch.no_grad():
        a = model(x, torch.tensor(250.0), y)
        b = model(x, torch.full((3,), 250.0), y)
    torch.testing.assert_close(a, b)


def test_gradient_checkpointing_same_gradients():
    x, t, y = _inputs()
    grads = []
    for use_checkpoint in (False, True):
        model = _tiny_model(use_checkpoint=use_checkpoint)
        model(x, t, y).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5, msg=key)


def test_bf16_autocast_forward_backward_close_to_fp32():
    model = _tiny_model()
    x, t, y = _inputs()
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.dtype == torch.bfloat16  # autocast really engaged
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_attention_runs_in_input_dtype_under_autocast(monkeypatch):
    import torch.nn.functional as F

    dtypes = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        dtypes.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = _tiny_model()
    x, t, y = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, t, y)
    # The official code casts q/k/v to float32 here, which rules out flash kernels.
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_model_cast_to_bf16_runs_without_autocast():
    model = _tiny_model().to(torch.bfloat16)
    x, t, y = _inputs()
    out = model(x.to(torch.bfloat16), t, y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_official_keys_have_no_buffers():
    model = _tiny_model()
    assert list(model.buffers()) == []


def test_attention_qk_scale_is_honoured():
    model = _tiny_model().eval()
    x, t, y = _inputs()
    scaled = _tiny_model(qk_scale=0.5).eval()
    with torch.no_grad():
        assert not torch.allclose(model(x, t, y), scaled(x, t, y))


def test_torch_compile_fullgraph_matches_eager():
    model = _tiny_model().eval()
    x, t, y = _inputs()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), atol=1e-5, rtol=1e-5)


def test_no_graph_breaks():
    import torch._dynamo

    model = _tiny_model().eval()
    x, t, y = _inputs()
    explanation = torch._dynamo.explain(model)(x, t, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_build_model_from_preset_matches_class():
    assert isinstance(build_model(get_preset("tiny")), UViT)
    with torch.device("meta"):
        assert isinstance(build_model(get_preset("coco256-s2")), UViTT2I)
