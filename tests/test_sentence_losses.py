"""SimCSE / ESimCSE losses and building blocks: float64 loops, known values, invariances, the
ESimCSE-reduces-to-SimCSE identity on a real (tiny) BERT with the real MiniLM tokenizer, the queue,
the EMA's closed form, word repetition on real STS-B sentences, and two gloo ranks."""

from __future__ import annotations

import copy
import functools
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import read_sts
from embedhub.training.losses import EmbeddingQueue, SimCSELoss, momentum_update, simcse_loss, word_repetition
from torch import nn


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _cos(x, y) -> float:
    return float(x @ y) / math.sqrt(float(x @ x) * float(y @ y))


def _simcse_loop(a, b, tau, hard=None, queue=None) -> float:
    """The loss written out: anchor i against every positive, every hard negative, every queue row."""
    cols = list(b) + (list(hard) if hard is not None else []) + (list(queue) if queue is not None else [])
    total = 0.0
    for i in range(len(a)):
        logits = [_cos(a[i], c) / tau for c in cols]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return total / len(a)


# ---------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("with_hard", [False, True])
@pytest.mark.parametrize("queue_rows", [0, 5])
def test_simcse_matches_float64_loop(with_hard, queue_rows):
    a, b = _rand(8, 16, seed=1), _rand(8, 16, seed=2)  # raw features: the loss takes cosines itself
    hard = _rand(8, 16, seed=3) if with_hard else None
    queue = _rand(queue_rows, 16, seed=4) if queue_rows else None
    for tau in (0.05, 0.5):
        got = simcse_loss(a, b, temperature=tau, hard_negatives=hard, queue=queue).item()
        assert got == pytest.approx(_simcse_loop(a, b, tau, hard, queue), rel=1e-12)


def test_simcse_gradients_and_queue_gets_none():
    a, b, h = (_rand(4, 5, seed=s).requires_grad_() for s in (1, 2, 3))
    q = _rand(3, 5, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, h: simcse_loss(a, b, temperature=0.1, hard_negatives=h, queue=q),
                                    (a, b, h))
    simcse_loss(a, b, hard_negatives=h, queue=q).backward()
    assert q.grad is None and a.grad is not None and h.grad.abs().sum() > 0


def test_simcse_known_values():
    eye = torch.eye(8, 16, dtype=torch.float64)
    # identical orthonormal pairs at a small temperature: log(1 + 7 e^{-1/τ}) ≈ 0
    assert simcse_loss(eye, eye, temperature=0.01).item() < 1e-40
    # all embeddings equal: every column is as likely as the positive -> ln(number of columns)
    same = F.normalize(_rand(1, 16), dim=-1).expand(8, 16)
    assert simcse_loss(same, same).item() == pytest.approx(math.log(8), rel=1e-12)
    assert simcse_loss(same, same, hard_negatives=same).item() == pytest.approx(math.log(16), rel=1e-12)
    assert simcse_loss(same, same, queue=same[:5]).item() == pytest.approx(math.log(13), rel=1e-12)
    # extra negatives can only add to the denominator
    a, b = _rand(8, 16, seed=1), _rand(8, 16, seed=2)
    assert simcse_loss(a, b, queue=_rand(4, 16, seed=5)).item() > simcse_loss(a, b).item()


def test_simcse_invariances():
    a, b, h, q = _rand(8, 16, seed=1), _rand(8, 16, seed=2), _rand(8, 16, seed=3), _rand(6, 16, seed=4)
    ref = simcse_loss(a, b, hard_negatives=h, queue=q).item()
    # scaling raw features (each row by its own positive factor) changes nothing
    scale = torch.rand(8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 10 + 0.1
    assert simcse_loss(a * scale, b * scale.flip(0), hard_negatives=h * 3, queue=q * 0.2).item() == pytest.approx(
        ref, rel=1e-12)
    # L2-normalised inputs give the same loss as raw ones
    n = functools.partial(F.normalize, dim=-1)
    assert simcse_loss(n(a), n(b), hard_negatives=n(h), queue=n(q)).item() == pytest.approx(ref, rel=1e-12)
    # jointly permuting (anchor, positive, hard negative) triples, and permuting the queue
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    qperm = torch.randperm(6, generator=torch.Generator().manual_seed(2))
    assert simcse_loss(a[perm], b[perm], hard_negatives=h[perm], queue=q[qperm]).item() == pytest.approx(
        ref, rel=1e-12)
    # ... but permuting positives alone does change it (the test above can fail)
    assert simcse_loss(a, b[perm], hard_negatives=h, queue=q).item() != pytest.approx(ref, rel=1e-3)


def test_simcse_bad_inputs():
    a = _rand(8, 16)
    with pytest.raises(ValueError, match=r"b must have shape \(8, 16\), got \(8, 12\)"):
        simcse_loss(a, _rand(8, 12))
    with pytest.raises(ValueError, match=r"hard_negatives must have shape \(8, 16\), got \(7, 16\)"):
        simcse_loss(a, a, hard_negatives=_rand(7, 16))
    with pytest.raises(ValueError, match=r"queue must have shape \(N, 16\), got \(3, 15\)"):
        simcse_loss(a, a, queue=_rand(3, 15))
    with pytest.raises(ValueError, match="at least one negative, got a batch of 1"):
        simcse_loss(a[:1], a[:1])
    with pytest.raises(ValueError, match="at least one negative, got a batch of 1"):
        SimCSELoss()(a[:1], a[:1], queue=torch.empty(0, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        simcse_loss(a, a, temperature=0)
    # a batch of 1 is a valid contrastive problem once negatives come from elsewhere
    assert simcse_loss(a[:1], a[:1], queue=_rand(2, 16, seed=3)).item() > 0


def test_simcse_module_equals_function_in_one_process():
    a, b, h, q = _rand(8, 16, seed=1), _rand(8, 16, seed=2), _rand(8, 16, seed=3), _rand(6, 16, seed=4)
    assert torch.equal(SimCSELoss(0.07)(a, b, h, q), simcse_loss(a, b, temperature=0.07, hard_negatives=h, queue=q))


# ---------------------------------------------------------------------------------------------- ESimCSE == SimCSE
def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
                                     attention_probs_dropout_prob=0.1)
    return transformers.BertModel(config)


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    return ids, (ids != pad).long()


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="module")
def sentences():
    s1, s2, _ = read_sts("train")
    return s1[:64] + s2[:64]


def test_esimcse_with_empty_queue_zero_momentum_no_repetition_equals_simcse(tokenizer, sentences):
    batch = [tokenizer(s, truncation=True, max_length=32)["input_ids"] for s in sentences[:8]]
    special = set(tokenizer.all_special_ids)

    def step(model, positives, queue):
        ids, mask = _pad(batch + positives, tokenizer.pad_token_id)  # one forward for both views
        torch.manual_seed(123)  # the same dropout masks in both runs
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        loss = simcse_loss(h[:8], h[8:], temperature=0.05, queue=queue)
        model.zero_grad()
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone() for p in model.parameters()]

    model = _tiny_bert().train()
    loss_simcse, grads_simcse = step(model, batch, None)

    momentum = copy.deepcopy(model)  # copied after the (here: random) weights are in place
    with torch.no_grad():
        for p in momentum.parameters():  # the two drift apart; m = 0 must copy the encoder exactly
            p.add_(0.01)
    assert not torch.equal(momentum.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    momentum_update(momentum, model, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(momentum.parameters(), model.parameters()))

    g = torch.Generator().manual_seed(0)
    repeated = [word_repetition(ids, dup_rate=0.0, special_ids=special, generator=g) for ids in batch]
    assert repeated == batch
    queue = EmbeddingQueue(0, 32)
    loss_esimcse, grads_esimcse = step(model, repeated, queue.tensor())
    assert torch.equal(loss_esimcse, loss_simcse)
    assert sum(x is not None for x in grads_simcse) > 30  # every weight the [CLS] output depends on
    assert all(x is y is None or torch.equal(x, y) for x, y in zip(grads_esimcse, grads_simcse))
    with torch.no_grad():  # the momentum encoder's keys of the original sentences, no dropout
        ids, mask = _pad(batch, tokenizer.pad_token_id)
        queue.push(momentum.eval()(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
    assert queue.tensor().shape == (0, 32)
    # with repetition on, the positives differ: the identity above is not vacuous
    repeated = [word_repetition(ids, special_ids=special, generator=torch.Generator().manual_seed(1)) for ids in batch]
    assert repeated != batch
    assert not torch.equal(step(model, repeated, None)[0], loss_simcse)


# ---------------------------------------------------------------------------------------------- the queue
@pytest.mark.parametrize("size", [0, 5, 12, 160])
def test_queue_bounded_fifo_and_never_holds_current_keys(size):
    b, d = 8, 16
    queue = EmbeddingQueue(size, d, dtype=torch.float64)
    assert queue.tensor().shape == (0, d)
    history = []
    for step in range(30):
        keys = F.normalize(_rand(b, d, seed=100 + step), dim=-1)
        anchors = F.normalize(_rand(b, d, seed=200 + step), dim=-1).requires_grad_()
        seen = queue.tensor()  # what the loss sees: before this batch's keys are pushed
        assert len(seen) == min(size, step * b) <= size
        expected = torch.cat(history)[-size:] if history and size else torch.empty(0, d)
        assert torch.equal(seen, expected.to(seen.dtype))  # oldest first, oldest dropped first
        if len(seen):
            assert torch.cdist(keys, seen).min() > 1e-6  # none of this batch's keys
        loss = simcse_loss(anchors, keys, queue=seen)
        snapshot = seen.clone()
        queue.push(keys)
        history.append(keys)
        assert torch.equal(seen, snapshot)  # a push does not modify what the loss holds ...
        loss.backward()  # ... so backward after the push still works
        assert len(queue) == min(size, (step + 1) * b)
    if size:
        assert torch.equal(queue.tensor(), torch.cat(history)[-size:])


def test_queue_push_larger_than_size_state_and_errors():
    queue = EmbeddingQueue(3, 2)
    queue.push(torch.arange(10.0).reshape(5, 2))
    assert queue.tensor().tolist() == [[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]
    restored = EmbeddingQueue(3, 2)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.tensor(), queue.tensor())
    with pytest.raises(ValueError, match=r"keys must have shape \(n, 2\), got \(4, 3\)"):
        queue.push(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="saved queue has size=3, dim=2; this queue has size=4, dim=2"):
        EmbeddingQueue(4, 2).load_state_dict(queue.state_dict())
    x = torch.ones(2, 2, requires_grad=True)
    queue.push(x * 2)
    assert not queue.tensor().requires_grad


# ---------------------------------------------------------------------------------------------- EMA
def test_momentum_update_closed_form():
    torch.manual_seed(0)
    target, source = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    t0 = [p.detach().clone() for p in target.parameters()]
    m, k = 0.995, 50
    for _ in range(k):
        momentum_update(target, source, m)
    for p, p0, s in zip(target.parameters(), t0, source.parameters()):
        np.testing.assert_allclose(p.detach(), m ** k * p0 + (1 - m ** k) * s.detach(), rtol=1e-12, atol=1e-14)
        assert p.grad is None and p.is_leaf
    # dyadic values: the k-step blend is exact in floating point
    t, s = torch.zeros(5, dtype=torch.float64), torch.full((5,), 3.0, dtype=torch.float64)
    for step in range(1, 21):
        momentum_update([t], [s], 0.5)
        assert torch.equal(t, (1 - 0.5 ** step) * s)
    # m = 1 keeps the target; buffers are not parameters and stay
    bn_t, bn_s = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    bn_s.running_mean.fill_(7.0)
    with torch.no_grad():
        bn_s.weight.fill_(2.0)
    momentum_update(bn_t, bn_s, 1.0)
    assert torch.equal(bn_t.weight, torch.ones(3)) and torch.equal(bn_t.running_mean, torch.zeros(3))
    momentum_update(bn_t, bn_s, 0.25)
    assert torch.equal(bn_t.weight, torch.full((3,), 1.75)) and torch.equal(bn_t.running_mean, torch.zeros(3))
    with pytest.raises(ValueError, match=r"parameter 'weight' has shape \(3, 4\) in target, \(3, 5\) in source"):
        momentum_update(nn.Linear(4, 3), nn.Linear(5, 3), 0.9)
    with pytest.raises(ValueError, match="parameter names differ"):
        momentum_update(nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3)), 0.9)


# ---------------------------------------------------------------------------------------------- word repetition
def _decompositions(ids: list[int], out: list[int], special: set[int]) -> bool:
    """Whether ``out`` is ``ids`` with some non-special tokens each repeated once, right after itself."""

    @functools.cache
    def ok(i: int, p: int) -> bool:
        if i == len(ids):
            return p == len(out)
        if p >= len(out) or out[p] != ids[i]:
            return False
        if ok(i + 1, p + 1):
            return True
        return ids[i] not in special and p + 1 < len(out) and out[p + 1] == ids[i] and ok(i + 1, p + 2)

    return ok(0, 0)


def test_word_repetition_on_real_sentences(tokenizer, sentences):
    special = set(tokenizer.all_special_ids)
    added = []
    for sentence in sentences:
        ids = tokenizer(sentence, truncation=True, max_length=32)["input_ids"]
        for seed in range(5):
            gen = torch.Generator().manual_seed(seed)
            out = word_repetition(ids, dup_rate=0.32, special_ids=special, generator=gen)
            assert _decompositions(ids, out, special), (sentence, ids, out)
            assert [t for t in out if t in special] == [t for t in ids if t in special]  # specials never repeated
            extra = len(out) - len(ids)
            assert 0 <= extra <= min(max(2, int(0.32 * len(ids))), sum(t not in special for t in ids))
            added.append(extra)
            again = word_repetition(ids, dup_rate=0.32, special_ids=special,
                                    generator=torch.Generator().manual_seed(seed))
            assert again == out  # deterministic for a seeded generator
    assert min(added) == 0 and max(added) >= 4  # really duplicates, and sometimes not at all


def test_word_repetition_bound_distribution_and_order():
    special = {0, 101, 102}
    ids = [101] + list(range(2000, 2010)) + [102]  # 12 ids, 10 distinct candidates
    bound = max(2, int(0.32 * 12))  # 3, drawn inclusively as the official randint(0, bound)
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(bound + 1, dtype=int)
    outs = set()
    for _ in range(400):
        out = word_repetition(ids, special_ids=special, generator=g)
        counts[len(out) - len(ids)] += 1
        assert out[0] == 101 and out[-1] == 102 and out[1] != 101 and out[-2] != 102
        assert sorted(set(out)) == sorted(set(ids)) and out[1:-1] == sorted(out[1:-1])  # order kept, copies adjacent
        outs.add(tuple(out))
    assert counts.min() > 60  # roughly uniform over 0..3 (100 expected each)
    assert len(outs) > 50
    # the cap: max_dup=1 never adds more than one token; short sentences get the max(2, ·) floor
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        assert len(word_repetition(ids, special_ids=special, generator=gen, max_dup=1)) <= len(ids) + 1
        short = word_repetition([101, 7, 8, 102], special_ids=special, generator=gen)
        assert len(short) <= 6 and short[0] == 101 and short[-1] == 102
    assert {len(word_repetition([101, 7, 8, 102], special_ids=special, generator=torch.Generator().manual_seed(s)))
            for s in range(50)} == {4, 5, 6}
    # nothing to duplicate, and repetition off
    assert word_repetition([101, 102], special_ids=special, generator=g) == [101, 102]
    assert word_repetition(ids, dup_rate=0.0, special_ids=special, generator=g) == ids
    assert word_repetition([], special_ids=special, generator=g) == []
    with pytest.raises(ValueError, match="dup_rate must be in"):
        word_repetition(ids, dup_rate=1.5, special_ids=special, generator=g)


# ---------------------------------------------------------------------------------------------- two gloo ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tensors: dict, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = len(tensors["a"]) // world
    local = {k: v[rank * b:(rank + 1) * b].clone().requires_grad_() for k, v in tensors.items() if k != "queue"}
    loss_fn = SimCSELoss(temperature=0.05, rank=rank, world_size=world)
    results = {}
    for name, hard, queue in (("plain", None, None), ("hard+queue", local["h"], tensors["queue"])):
        for t in local.values():
            t.grad = None
        loss = loss_fn(local["a"], local["b"], hard, queue)
        (loss / world).backward()  # DDP averages gradients over ranks
        results[name] = (loss.detach(), local["a"].grad.clone(), local["b"].grad.clone(),
                         None if hard is None else local["h"].grad.clone())
    out[rank] = results
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process():
    import torch.multiprocessing as mp

    tensors = {"a": _rand(8, 16, seed=1), "b": _rand(8, 16, seed=2), "h": _rand(8, 16, seed=3),
               "queue": _rand(5, 16, seed=4)}
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), tensors, out), nprocs=2, join=True)
    for name, use_extra in (("plain", False), ("hard+queue", True)):
        a, b, h = (tensors[k].clone().requires_grad_() for k in "abh")
        ref = simcse_loss(a, b, temperature=0.05, hard_negatives=h if use_extra else None,
                          queue=tensors["queue"] if use_extra else None)
        ref.backward()
        r0, r1 = out[0][name], out[1][name]
        assert ((r0[0] + r1[0]) / 2).item() == pytest.approx(ref.item(), rel=1e-12)
        np.testing.assert_allclose(torch.cat([r0[1], r1[1]]), a.grad, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(torch.cat([r0[2], r1[2]]), b.grad, rtol=1e-10, atol=1e-12)
        if use_extra:
            np.testing.assert_allclose(torch.cat([r0[3], r1[3]]), h.grad, rtol=1e-10, atol=1e-12)
        # the local-only loss (no gather) would differ: the comparison can fail
        local_only = simcse_loss(tensors["a"][:4], tensors["b"][:4], temperature=0.05)
        assert local_only.item() != pytest.approx(r0[0].item(), rel=1e-6)
