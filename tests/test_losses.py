"""multi_positive_nt_xent against formulas written out as plain Python loops."""
import math
import random

import pytest
import torch

from sslfer_core.losses import multi_positive_nt_xent, nt_xent_pair_indices


def reference_loss(emb, positive_index, positive_weight, temperature, exclude, row_valid):
    """The documented formula, one row and one column at a time, in float64 Python arithmetic."""
    rows = emb.double().tolist()
    unit = [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in rows]
    n = len(unit)
    sim = [[sum(a * b for a, b in zip(unit[i], unit[k])) / temperature for k in range(n)] for i in range(n)]
    terms = []
    for i in range(n):
        if row_valid is not None and not row_valid[i]:
            continue
        pairs = [(int(p), float(w)) for p, w in zip(positive_index[i], positive_weight[i]) if int(p) >= 0]
        if not pairs or sum(w for _, w in pairs) <= 0:
            continue
        denominator = sum(math.exp(sim[i][k]) for k in range(n)
                          if k != i and not (exclude is not None and exclude[i][k]))
        if denominator == 0:  # everything excluded: the term is undefined and skipped
            continue
        total = sum(w * math.log(math.exp(sim[i][p]) / denominator) for p, w in pairs)
        terms.append(-total / sum(w for _, w in pairs))
    return sum(terms) / len(terms) if terms else 0.0


def random_case(rng: random.Random):
    n, d = rng.randint(3, 12), rng.randint(2, 16)
    temperature = rng.choice([0.07, 0.1, 0.5, 1.0])
    emb = torch.randn(n, d, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    p = rng.randint(1, 4)
    positive_index = [[-1] * p for _ in range(n)]
    positive_weight = [[rng.uniform(0.0, 2.0) for _ in range(p)] for _ in range(n)]
    for i in range(n):
        others = [k for k in range(n) if k != i]
        chosen = rng.sample(others, rng.randint(0, min(p, len(others))))
        slots = rng.sample(range(p), len(chosen))
        for slot, k in zip(slots, chosen):
            positive_index[i][slot] = k
    exclude = [[rng.random() < 0.25 for _ in range(n)] for _ in range(n)]
    row_valid = [rng.random() < 0.8 for _ in range(n)]
    return n, emb, positive_index, positive_weight, temperature, exclude, row_valid


@pytest.mark.parametrize("seed", range(20))
def test_matches_loop_reference_on_random_cases(seed):
    rng = random.Random(seed)
    n, emb, pos, w, t, exclude, valid = random_case(rng)
    use_weight, use_exclude, use_valid = rng.random() < 0.7, rng.random() < 0.7, rng.random() < 0.5
    got = multi_positive_nt_xent(
        emb, torch.tensor(pos), torch.tensor(w) if use_weight else None, t,
        torch.tensor(exclude) if use_exclude else None, torch.tensor(valid) if use_valid else None)
    weights = w if use_weight else [[1.0] * len(r) for r in pos]
    want = reference_loss(emb, pos, weights, t, exclude if use_exclude else None, valid if use_valid else None)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_two_view_case_equals_simclr_nt_xent():
    b, t = 6, 0.2
    emb = torch.randn(2 * b, 8, generator=torch.Generator().manual_seed(0))
    z = torch.nn.functional.normalize(emb.double(), dim=1)
    sim = (z @ z.T / t).tolist()
    total = 0.0
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        total += -math.log(math.exp(sim[i][j]) / sum(math.exp(sim[i][k]) for k in range(2 * b) if k != i))
    got = multi_positive_nt_xent(emb, nt_xent_pair_indices(b, 2), temperature=t)
    assert got.item() == pytest.approx(total / (2 * b), rel=1e-5)


def test_pair_indices_layout_for_three_views():
    idx = nt_xent_pair_indices(2, 3)
    assert idx.tolist() == [[2, 4], [3, 5], [0, 4], [1, 5], [0, 2], [1, 3]]
    assert idx.dtype == torch.long


def test_gradients_flow_to_every_embedding():
    emb = torch.randn(8, 5, requires_grad=True)
    loss = multi_positive_nt_xent(emb, nt_xent_pair_indices(4, 2), temperature=0.1)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert (emb.grad.abs().sum(dim=1) > 0).all()


def test_bf16_inputs_are_computed_in_fp32_even_under_autocast():
    emb32 = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    emb16 = emb32.bfloat16()
    idx = nt_xent_pair_indices(8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = multi_positive_nt_xent(emb16, idx, temperature=0.07)
    exact = multi_positive_nt_xent(emb16.float(), idx, temperature=0.07)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(exact.item(), rel=1e-6)
    # The same computation in bf16 logits is visibly worse, so the fp32 path is what made the match.
    z = torch.nn.functional.normalize(emb16.float(), dim=1).bfloat16()
    logits = (z @ z.T / 0.07).masked_fill(torch.eye(16, dtype=torch.bool), float("-inf"))
    naive = -(logits.gather(1, idx) - torch.logsumexp(logits, dim=1, keepdim=True)).float().mean()
    assert abs(naive.item() - exact.item()) > 1e-4


def test_rows_without_positive_or_invalid_are_skipped_but_stay_negatives():
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([[3], [-1], [5], [0], [1], [-1]])
    valid = torch.tensor([True, True, False, True, True, True])
    got = multi_positive_nt_xent(emb, idx, temperature=0.5, row_valid=valid)
    want = reference_loss(emb, idx.tolist(), [[1.0]] * 6, 0.5, None, valid.tolist())
    assert got.item() == pytest.approx(want, rel=1e-5)
    # Only rows 0, 3 and 4 contribute; dropping a skipped row as a negative changes the value.
    exclude = torch.zeros(6, 6, dtype=torch.bool)
    exclude[:, 5] = True
    assert multi_positive_nt_xent(emb, idx, temperature=0.5, row_valid=valid,
                                  exclude_from_denominator=exclude).item() != pytest.approx(got.item())


def test_no_contributing_row_gives_zero_with_a_graph():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = multi_positive_nt_xent(emb, torch.full((4, 1), -1), temperature=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_row_with_empty_denominator_is_skipped():
    emb = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    idx = torch.tensor([[1], [0], [0]])
    exclude = torch.tensor([[False, True, True], [False, False, False], [False, False, False]])
    got = multi_positive_nt_xent(emb, idx, temperature=0.5, exclude_from_denominator=exclude)
    want = reference_loss(emb, idx.tolist(), [[1.0]] * 3, 0.5, exclude.tolist(), None)
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert want == pytest.approx(multi_positive_nt_xent(emb, idx, temperature=0.5,
                                 row_valid=torch.tensor([False, True, True])).item(), rel=1e-5)


def test_self_as_positive_is_rejected():
    with pytest.raises(ValueError, match="itself"):
        multi_positive_nt_xent(torch.randn(3, 2), torch.tensor([[0], [2], [1]]))
