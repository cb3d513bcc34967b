import math

import pytest
import torch
from torch import nn

from sslfer_core.lgi_former import (PRESETS, LGIFormerClassifier, LGIFormerConfig, LGIFormerEncoder,
                                    check_visible_regions, count_parameters, merge_regions, partition_regions,
                                    preset, region_of_token, sincos_table)
from sslfer_core.tube_masking import tube_window_mask
from torch_threads import one_thread  # noqa: F401  (autouse)


def small_cfg(**changes):
    """A fast config whose regions (2, 2, 2) are narrower than the grid (8, 4, 4), unlike the presets."""
    base = dict(frames=16, img_size=32, tubelet=2, patch=8, dim=32, depth=2, heads=4, region=(2, 2, 2),
                dec_dim=32, dec_depth=1, dec_heads=4)
    base.update(changes)
    return LGIFormerConfig(**base)


def test_full_classifier_has_reference_parameter_count():
    with torch.device("meta"):
        model = LGIFormerClassifier(preset("full"), num_classes=7)
    assert count_parameters(model) == 84_878_343


def test_full_block_count_matches_formula():
    d, hidden = 512, 2048
    attention = 4 * d * d + d + 2 * d  # q, kv, proj weights; proj, q and v biases (no k bias)
    norms = 5 * 2 * d  # local, global, cross q, cross kv, mlp
    mlp = 2 * d * hidden + hidden + d
    with torch.device("meta"):
        encoder = LGIFormerEncoder(preset("full"))
    assert count_parameters(encoder.blocks[0]) == 3 * attention + norms + mlp == 5_255_168
    assert not any(p.dim() == 1 and p.numel() == 512 and n.endswith("k_bias") for n, p in encoder.named_parameters())


def test_full_config_geometry():
    cfg = preset("full")
    assert cfg.grid == (8, 10, 10)
    assert cfg.num_tokens == 800
    assert cfg.num_regions == 8
    assert cfg.region_tokens == 100
    assert cfg.patch_dim == 3 * 2 * 16 * 16 == 1536
    assert (cfg.appearance_dim, cfg.motion_dim, cfg.pred_dim) == (768, 768, 1536)


def test_tiny_preset_keeps_the_full_token_geometry():
    tiny, full = preset("tiny"), preset("full")
    assert (tiny.grid, tiny.region, tiny.num_regions) == (full.grid, full.region, full.num_regions)
    assert tiny.tubelet == full.tubelet


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="full, tiny"):
        preset("huge")
    assert set(PRESETS) == {"full", "tiny"}


@pytest.mark.parametrize("changes, message", [
    (dict(region=(3, 5, 10)), "tile"),
    (dict(region=(2, 5, 4)), "tile"),
    (dict(img_size=150), "multiple of patch"),
    (dict(frames=15), "multiple of tubelet"),
    (dict(tubelet=1, frames=16), "tubelet must be >= 2"),
    (dict(heads=7), "divide"),
])
def test_invalid_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        LGIFormerConfig(**changes)


def test_sincos_table_matches_formula():
    table = sincos_table(800, 512)
    assert table.shape == (800, 512)
    for p, j in [(0, 0), (0, 1), (3, 4), (3, 5), (799, 510), (799, 511), (17, 100)]:
        angle = p / 10000 ** (2 * (j // 2) / 512)
        expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        assert table[p, j].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("cfg", [preset("full"), small_cfg()])
def test_region_of_token_matches_loops(cfg):
    gt, gh, gw = cfg.grid
    rt, rh, rw = cfg.region
    nt, nh, nw = cfg.region_grid
    expected = []
    for t in range(gt):
        for h in range(gh):
            for w in range(gw):
                expected.append(((t // rt) * nh + h // rh) * nw + w // rw)
    assert region_of_token(cfg).tolist() == expected


@pytest.mark.parametrize("cfg", [preset("full"), small_cfg()])
def test_partition_groups_each_region_in_raster_order_and_merge_inverts(cfg):
    n = cfg.num_tokens
    tokens = torch.arange(2 * n, dtype=torch.float32).reshape(2, n, 1)  # value = sample * n + raster index
    grouped, order = partition_regions(tokens, cfg)
    assert grouped.shape == (2, cfg.num_regions, cfg.region_tokens, 1)
    region = region_of_token(cfg).tolist()
    for r in range(cfg.num_regions):
        members = [i for i in range(n) if region[i] == r]
        assert grouped[1, r, :, 0].tolist() == [float(n + i) for i in members]
    assert torch.equal(merge_regions(grouped, order), tokens)


@pytest.mark.parametrize("cfg", [preset("full"), small_cfg()])
def test_partition_of_visible_tokens_round_trips(cfg):
    n = cfg.num_tokens
    mask = tube_window_mask(3, cfg, 0.75, generator=torch.Generator().manual_seed(4), device="cpu")
    visible = ~mask
    per_region = check_visible_regions(visible, cfg)
    everything = torch.arange(3 * n, dtype=torch.float32).reshape(3, n, 1)
    grouped, order = partition_regions(everything, cfg, visible, per_region)
    assert grouped.shape == (3, cfg.num_regions, per_region, 1)
    region = region_of_token(cfg).tolist()
    for b in range(3):
        for r in range(cfg.num_regions):
            members = [float(b * n + i) for i in range(n) if region[i] == r and bool(visible[b, i])]
            assert grouped[b, r, :, 0].tolist() == members
    assert torch.equal(merge_regions(grouped, order), everything[visible].reshape(3, -1, 1))
    # The count read from the mask itself gives the same layout.
    assert torch.equal(partition_regions(everything, cfg, visible)[0], grouped)


def test_unequal_regions_are_refused():
    cfg = preset("full")
    visible = torch.zeros(1, 800, dtype=torch.bool)
    visible[0, :80] = True  # all in the first slices: regions 0 and 1 only
    with pytest.raises(ValueError, match="equally"):
        check_visible_regions(visible, cfg)
    encoder = LGIFormerEncoder(small_cfg())
    with pytest.raises(ValueError, match="equally"):
        encoder(torch.zeros(1, 3, 16, 32, 32), visible=torch.ones(1, 128, dtype=torch.bool).index_fill_(1, torch.tensor([0]), False))


def test_encoder_with_all_tokens_visible_equals_unmasked_encoder():
    torch.manual_seed(0)
    cfg = small_cfg()
    encoder = LGIFormerEncoder(cfg).eval()
    x = torch.randn(2, 3, 16, 32, 32)
    full = encoder(x)
    assert full.shape == (2, cfg.num_regions + cfg.num_tokens, cfg.dim)
    assert torch.allclose(encoder(x, visible=torch.ones(2, cfg.num_tokens, dtype=torch.bool)), full, atol=1e-6)


def test_encoder_without_blocks_returns_visible_tokens_in_raster_order():
    cfg = small_cfg()
    encoder = LGIFormerEncoder(cfg)
    encoder.blocks = nn.ModuleList()
    x = torch.randn(2, 3, 16, 32, 32)
    visible = ~tube_window_mask(2, cfg, 0.5, generator=torch.Generator().manual_seed(1), device="cpu")
    rep, local = encoder.forward_features(x, visible)
    assert torch.equal(local, encoder.embed(x)[visible].reshape(2, -1, cfg.dim))
    assert torch.equal(rep, encoder.rep_tokens.expand(2, -1, -1))


def test_masked_pixels_do_not_reach_the_encoder_output():
    torch.manual_seed(0)
    cfg = small_cfg()
    encoder = LGIFormerEncoder(cfg).eval()
    mask = tube_window_mask(1, cfg, 0.5, generator=torch.Generator().manual_seed(2), device="cpu")
    x = torch.randn(1, 3, 16, 32, 32)
    # Overwrite every masked tubelet's pixels.
    grid_t, grid_h, grid_w = cfg.grid
    y = x.clone()
    for i in mask[0].nonzero().flatten().tolist():
        t, h, w = i // (grid_h * grid_w), (i // grid_w) % grid_h, i % grid_w
        y[:, :, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8] = 5.0
    assert not torch.equal(x, y)
    assert torch.equal(encoder(x, ~mask), encoder(y, ~mask))
    # ...while a visible tubelet does reach it.
    first_visible = int((~mask[0]).nonzero()[0])
    t, h, w = first_visible // 16, (first_visible // 4) % 4, first_visible % 4
    y[:, :, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8] = 5.0
    assert not torch.allclose(encoder(x, ~mask), encoder(y, ~mask))


def test_information_crosses_regions_only_through_representative_tokens():
    torch.manual_seed(0)
    cfg = small_cfg(depth=1)
    encoder = LGIFormerEncoder(cfg).eval()
    x = torch.randn(1, 3, 16, 32, 32)
    y = x.clone()
    y[:, :, 0:2, 0:8, 0:8] += 1.0  # token 0, region 0
    a, b = encoder.forward_features(x), encoder.forward_features(y)
    region = region_of_token(cfg)
    changed = (a[1] - b[1]).abs().amax(dim=-1)[0] > 1e-6
    assert bool(changed[region != 0].all())  # every other region hears of it (via the representatives)
    # Without the global and cross steps the other regions' tokens stay exactly as they were.
    for block in encoder.blocks:
        block.global_attn.proj.weight.data.zero_()
        block.global_attn.proj.bias.data.zero_()
        block.cross_attn.proj.weight.data.zero_()
        block.cross_attn.proj.bias.data.zero_()
    a, b = encoder.forward_features(x), encoder.forward_features(y)
    changed = (a[1] - b[1]).abs().amax(dim=-1)[0] > 0
    assert not bool(changed[region != 0].any())
    assert bool(changed[region == 0].any())


def test_tiny_classifier_forward_backward():
    cfg = preset("tiny")
    model = LGIFormerClassifier(cfg, num_classes=7)
    x = torch.randn(2, 3, cfg.frames, cfg.img_size, cfg.img_size)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.square().sum().backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    last = f"encoder.blocks.{cfg.depth - 1}."
    # Only the last block's local-token steps are unread by a classifier (see LGIFormerClassifier).
    assert unused == {last + s for s in ("cross_norm_q.weight", "cross_norm_q.bias", "cross_norm_kv.weight",
                                         "cross_norm_kv.bias", "cross_attn.q.weight", "cross_attn.kv.weight",
                                         "cross_attn.q_bias", "cross_attn.v_bias", "cross_attn.proj.weight",
                                         "cross_attn.proj.bias")}


def test_pooled_reads_only_representative_tokens():
    torch.manual_seed(0)
    cfg = small_cfg()
    encoder = LGIFormerEncoder(cfg).eval()
    x = torch.randn(2, 3, 16, 32, 32)
    rep, _ = encoder.forward_features(x)
    expected = nn.functional.layer_norm(rep.mean(dim=1), (cfg.dim,), encoder.norm.weight, encoder.norm.bias, 1e-6)
    assert torch.allclose(encoder.pooled(x), expected, atol=1e-6)


def test_wrong_clip_shape_is_a_clear_error():
    encoder = LGIFormerEncoder(small_cfg())
    with pytest.raises(ValueError, match=r"clip must be \(B, 3, 16, 32, 32\)"):
        encoder(torch.zeros(1, 3, 8, 32, 32))


def test_drop_path_acts_in_training_only():
    torch.manual_seed(0)
    cfg = small_cfg(drop_path=0.5)
    encoder = LGIFormerEncoder(cfg)
    assert [b.drop_path.p for b in encoder.blocks] == [0.0, 0.5]  # linear in depth
    x = torch.randn(4, 3, 16, 32, 32)
    encoder.train()
    assert not torch.equal(encoder(x), encoder(x))
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))


@pytest.mark.parametrize("need_local", [True, False])
def test_mlp_step_drops_once_per_clip_and_region_for_all_its_tokens(need_local):
    """Step 4 of a block: one stochastic-depth draw per (clip, region), shared by the region's representative and
    local tokens (the reference's DropPath over (B * regions, 1 + tokens, D))."""
    from sslfer_core.lgi_former import LGIBlock

    torch.manual_seed(0)
    block = LGIBlock(dim=16, heads=2, mlp_ratio=2.0, drop_path=0.5).train()
    with torch.no_grad():  # steps 1-3 add nothing, so the output is the input plus the (dropped) MLP update
        for attn in (block.local_attn, block.global_attn, block.cross_attn):
            attn.proj.weight.zero_()
            attn.proj.bias.zero_()
    b, r, l = 6, 4, 5
    rep, loc = torch.randn(b, r, 16), torch.randn(b, r, l, 16)
    with torch.no_grad():
        out_rep, out_loc = block(rep, loc, need_local=need_local)
        full_rep = block.mlp(block.mlp_norm(rep))
        full_loc = block.mlp(block.mlp_norm(loc))
    rep_scale = ((out_rep - rep) / full_rep).mean(dim=-1)  # (b, r): 0 or 2
    assert torch.allclose(rep_scale, rep_scale.round(), atol=1e-4) and set(rep_scale.round().unique().tolist()) == {0.0, 2.0}
    if need_local:
        loc_scale = ((out_loc - loc) / full_loc).mean(dim=-1)  # (b, r, l)
        assert torch.allclose(loc_scale, rep_scale[:, :, None].expand(-1, -1, l), atol=1e-4)
    else:
        assert torch.equal(out_loc, loc)
