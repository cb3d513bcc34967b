"""MaskFN selection against brute force, and its two ways of entering the loss."""
import math
import random

import pytest
import torch

from sslfer_core.false_negatives import apply_false_negatives, select_false_negatives
from sslfer_core.losses import multi_positive_nt_xent, nt_xent_pair_indices


def random_batch(seed):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n, dd, p = rng.randint(2, 20), rng.randint(2, 12), rng.randint(1, 3)
    desc = torch.nn.functional.normalize(torch.randn(n, dd, generator=g), dim=1)
    if rng.random() < 0.5:  # selection is by cosine, so row scale must not matter
        desc = desc * (0.2 + 3 * torch.rand(n, 1, generator=g))
    has = torch.rand(n, generator=g) < 0.75
    desc[~has] = float("nan")  # garbage where the descriptor is missing
    if rng.random() < 0.5:
        desc = desc.half()
    groups = torch.randint(0, max(1, n // 2), (n,), generator=g)
    pos = torch.full((n, p), -1, dtype=torch.long)
    for i in range(n):
        chosen = rng.sample([k for k in range(n) if k != i], rng.randint(0, min(p, n - 1)))
        pos[i, :len(chosen)] = torch.tensor(chosen, dtype=torch.long)
    return desc, has, groups, pos, rng.randint(1, 4)


def brute_force_similarities(desc, has, groups, pos, i):
    """Cosine similarity of every allowed candidate of row i, by plain loops."""
    if not has[i]:
        return {}
    a = desc[i].double().tolist()
    out = {}
    for k in range(len(desc)):
        if k == i or not has[k] or groups[k] == groups[i] or k in pos[i].tolist():
            continue
        b = desc[k].double().tolist()
        out[k] = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_selection_is_brute_force_top_k_among_allowed(seed):
    desc, has, groups, pos, k = random_batch(seed)
    selected = select_false_negatives(desc, has, groups, pos, k=k)
    assert selected.shape == (len(desc), k) and selected.dtype == torch.long
    for i in range(len(desc)):
        allowed = brute_force_similarities(desc, has, groups, pos, i)
        chosen = [c for c in selected[i].tolist() if c >= 0]
        assert selected[i].tolist() == chosen + [-1] * (k - len(chosen)), "-1 only as trailing padding"
        assert len(chosen) == min(k, len(allowed)) and len(set(chosen)) == len(chosen)
        for c in chosen:
            assert c != i and has[c] and groups[c] != groups[i] and c not in pos[i].tolist()
        # Compare similarity values, not indices, so ties cannot make the test flaky.
        best = sorted(allowed.values(), reverse=True)[:len(chosen)]
        assert [allowed[c] for c in chosen] == pytest.approx(best, abs=2e-3 if desc.dtype == torch.half else 1e-5)


def test_rows_without_descriptor_neither_select_nor_are_selected():
    desc = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    desc[2] = desc[0]  # would be row 0's best match if it had a descriptor
    has = torch.tensor([True, True, False, True, True, False])
    selected = select_false_negatives(desc, has, torch.arange(6), torch.full((6, 1), -1), k=5)
    assert (selected[2] == -1).all() and (selected[5] == -1).all()
    assert not torch.isin(selected, torch.tensor([2, 5])).any()
    assert (selected[[0, 1, 3, 4], :3] >= 0).all() and (selected[:, 3:] == -1).all()


def test_k_larger_than_batch_pads_with_minus_one():
    desc = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    selected = select_false_negatives(desc, torch.ones(3, dtype=torch.bool), torch.arange(3),
                                      torch.full((3, 1), -1), k=5)
    assert selected.shape == (3, 5) and (selected[:, 2:] == -1).all() and (selected[:, :2] >= 0).all()


def test_apply_positive_mode_appends_weighted_positives():
    pos = torch.tensor([[1, -1], [0, -1], [-1, 0]])
    weight = torch.tensor([[1.0, 5.0], [0.5, 0.0], [1.0, 2.0]])
    selected = torch.tensor([[2], [-1], [1]])
    new_pos, new_w, exclude = apply_false_negatives(pos, weight, selected, mode="positive", lam=0.8)
    assert new_pos.tolist() == [[1, -1, 2], [0, -1, -1], [-1, 0, 1]]
    # Padding entries get weight 0 whatever the input weight said.
    torch.testing.assert_close(new_w, torch.tensor([[1.0, 0.0, 0.8], [0.5, 0.0, 0.0], [0.0, 2.0, 0.8]]))
    assert exclude.shape == (3, 3) and not exclude.any()


def test_apply_mask_mode_only_excludes():
    pos = torch.tensor([[1], [0], [-1]])
    selected = torch.tensor([[2, -1], [-1, -1], [0, 1]])
    new_pos, new_w, exclude = apply_false_negatives(pos, None, selected, mode="mask")
    assert torch.equal(new_pos, pos)
    assert new_w.tolist() == [[1.0], [1.0], [0.0]]
    assert exclude.tolist() == [[False, False, True], [False, False, False], [True, True, False]]


def test_apply_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        apply_false_negatives(torch.tensor([[1], [0]]), None, torch.tensor([[-1], [-1]]), mode="drop")


def test_mask_mode_loss_equals_formula_with_columns_removed():
    b, t = 4, 0.3
    emb = torch.randn(2 * b, 6, generator=torch.Generator().manual_seed(5))
    pos = nt_xent_pair_indices(b, 2)
    selected = torch.tensor([[1], [-1], [7], [-1], [-1], [2], [-1], [0]])
    new_pos, new_w, exclude = apply_false_negatives(pos, None, selected, mode="mask")
    got = multi_positive_nt_xent(emb, new_pos, new_w, t, exclude)
    z = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = (z @ z.T / t).tolist()
    removed = {0: {1}, 2: {7}, 5: {2}, 7: {0}}
    total = 0.0
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        denominator = sum(math.exp(sim[i][k]) for k in range(2 * b) if k != i and k not in removed.get(i, ()))
        total += -math.log(math.exp(sim[i][j]) / denominator)
    assert got.item() == pytest.approx(total / (2 * b), rel=1e-5)
    assert got.item() < multi_positive_nt_xent(emb, pos, temperature=t).item()


def test_positive_mode_loss_averages_the_weighted_terms():
    b, t, lam = 3, 0.5, 0.8
    emb = torch.randn(2 * b, 5, generator=torch.Generator().manual_seed(6))
    selected = torch.tensor([[1], [-1], [-1], [-1], [0], [-1]])
    new_pos, new_w, exclude = apply_false_negatives(nt_xent_pair_indices(b, 2), None, selected, lam=lam)
    got = multi_positive_nt_xent(emb, new_pos, new_w, t, exclude)
    z = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = (z @ z.T / t).tolist()
    total = 0.0
    for i in range(2 * b):
        log_p = lambda k: sim[i][k] - math.log(sum(math.exp(sim[i][m]) for m in range(2 * b) if m != i))  # noqa: E731
        j = (i + b) % (2 * b)
        extra = int(selected[i, 0])
        if extra < 0:
            total += -log_p(j)
        else:
            total += -(log_p(j) + lam * log_p(extra)) / (1 + lam)
    assert got.item() == pytest.approx(total / (2 * b), rel=1e-5)
