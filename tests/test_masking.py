import pytest
import torch

from mimkit.masking import gather_tokens, grid_offsets, num_visible, patchify, random_split, unpatchify


def test_patchify_gap0_matches_conv_weight_order():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)  # (2, 6, 48)
    assert p.shape == (2, 6, 48)
    # cell (row 1, col 2) is index 1*3+2; its vector is the (C, P, P) block flattened
    assert torch.equal(p[1, 5], x[1, :, 4:8, 8:12].reshape(-1))
    conv = torch.nn.Conv2d(3, 5, 4, 4)
    ref = conv(x).flatten(2).transpose(1, 2)  # (2, 6, 5)
    lin = torch.nn.functional.linear(p, conv.weight.flatten(1), conv.bias)
    torch.testing.assert_close(lin, ref)
    assert torch.equal(unpatchify(patchify(x[:, :, :8, :8], 4), 4, (2, 2)), x[:, :, :8, :8])


def test_patchify_with_gap_takes_each_patch_at_its_offset():
    P, G, grid = 3, 2, 3
    x = torch.randn(2, 3, grid * (P + G), grid * (P + G))
    off = grid_offsets(2, grid * grid, G, x.device, torch.Generator().manual_seed(1))
    assert off.min() >= 0 and off.max() <= G and off.shape == (2, 9, 2)
    p = patchify(x, P, G, off)
    for b in range(2):
        for cell in range(grid * grid):
            r = (cell // grid) * (P + G) + off[b, cell, 0]
            c = (cell % grid) * (P + G) + off[b, cell, 1]
            assert torch.equal(p[b, cell], x[b, :, r : r + P, c : c + P].reshape(-1))


def test_gap_offsets_are_fresh_per_cell_and_image():
    off = grid_offsets(4, 196, 4, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert len(torch.unique(off.view(-1, 2), dim=0)) == 25  # every (row, col) offset in [0, 4]^2 occurs
    assert not torch.equal(off[0], off[1])


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not a multiple of patch \\+ gap"):
        patchify(torch.zeros(1, 3, 31, 31), 4, 1, torch.zeros(1, 36, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="offsets"):
        patchify(torch.zeros(1, 3, 30, 30), 4, 1)


@pytest.mark.parametrize("L, ratio, nv", [(196, 0.9, 20), (196, 0.75, 49), (64, 0.9, 6), (4, 0.5, 2)])
def test_split_counts_disjoint_and_covering(L, ratio, nv):
    vis, tgt = random_split(8, L, ratio, torch.device("cpu"))
    assert vis.shape == (8, nv) and tgt.shape == (8, L - nv)
    for b in range(8):
        both = torch.cat([vis[b], tgt[b]])
        assert torch.equal(both.sort().values, torch.arange(L))  # disjoint and covering
    assert num_visible(L, ratio) == nv


def test_split_is_random_per_image_and_seeded():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = random_split(4, 50, 0.75, torch.device("cpu"), g1)
    b = random_split(4, 50, 0.75, torch.device("cpu"), g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0][0].sort().values, a[0][1].sort().values)
    c = random_split(4, 50, 0.75, torch.device("cpu"), torch.Generator().manual_seed(4))
    assert not torch.equal(a[0], c[0])


def test_split_rejects_empty_sets():
    with pytest.raises(ValueError, match="leaves 0 visible"):
        random_split(1, 10, 0.99, torch.device("cpu"))
    with pytest.raises(ValueError, match="and 0 target"):
        random_split(1, 10, 0.01, torch.device("cpu"))


def test_gather_tokens():
    x = torch.arange(24.0).view(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 1]])
    assert torch.equal(gather_tokens(x, idx), torch.stack([x[0, [3, 0]], x[1, [1, 1]]]))


def test_inverse_block_split_keeps_one_wrapped_block_visible():
    from mimkit.masking import inverse_block_split

    torch.manual_seed(0)
    visible, target = inverse_block_split(64, 64, 0.65, torch.device("cpu"))
    nv = round(64 * 0.35)
    assert visible.shape == (64, nv) and target.shape == (64, 64 - nv)
    both = torch.cat([visible, target], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(64).expand(64, -1))  # disjoint, covering every cell
    for row in visible:
        mask = torch.zeros(64, dtype=torch.bool)
        mask[row] = True
        grid = mask.view(8, 8)
        # some roll of the grid puts the visible cells inside one rectangle of at most nv + its last row's gap
        fits = []
        for dr in range(8):
            for dc in range(8):
                g = grid.roll((dr, dc), (0, 1))
                rs, cs = g.nonzero(as_tuple=True)
                h, w = int(rs.max() - rs.min() + 1), int(cs.max() - cs.min() + 1)
                fits.append(h * w < nv + max(h, w))
        assert any(fits)


def test_masking_kind_reaches_the_model():
    from mimkit.config import load_config
    from mimkit.model import build_model

    assert build_model(load_config("capi+tiny")).mask_kind == "inverse_block"
