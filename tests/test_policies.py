import pytest
import torch

from mdpalign.policies import EmbeddingPolicy, MLPPolicy, PolicyInputError, TabularPolicy


def test_tabular_policy_defaults_to_uniform_and_seeds_deterministically():
    pol = TabularPolicy(3, 4)
    assert pol.logits.dtype == torch.float64 and pol.logits.requires_grad
    torch.testing.assert_close(pol.probs(), torch.full((3, 4), 0.25, dtype=torch.float64), rtol=0, atol=0)
    a, b, c = (TabularPolicy(3, 4, init_scale=1.0, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.logits, b.logits) and not torch.equal(a.logits, c.logits)
    assert TabularPolicy(3, 4, dtype=torch.float32, init_scale=0.1, seed=0).probs().dtype == torch.float32


def test_tabular_token_logps_and_embedding_path_agree():
    pol = TabularPolicy(5, 3, init_scale=2.0, seed=0)
    s = torch.tensor([[0, 4], [2, 2]])
    a = torch.tensor([[1, 2], [0, 1]])
    lp = pol.token_logps(s, a)
    for i in range(2):
        for j in range(2):
            z = pol.logits[s[i, j]]
            assert lp[i, j].item() == pytest.approx((z[a[i, j]] - torch.logsumexp(z, 0)).item(), rel=1e-15)
    assert torch.equal(pol.forward_embeds(pol.embed(s)), pol(s))
    e = 0.6 * pol.embed(torch.tensor([1])) + 0.4 * pol.embed(torch.tensor([3]))
    torch.testing.assert_close(pol.forward_embeds(e)[0], 0.6 * pol.logits[1] + 0.4 * pol.logits[3], rtol=0, atol=1e-15)
    assert isinstance(pol, EmbeddingPolicy)


def test_ids_out_of_range_or_float_raise():
    pol = TabularPolicy(3, 2)
    with pytest.raises(PolicyInputError, match=r"states out of range \[0, 3\)"):
        pol.log_probs(torch.tensor([3]))
    with pytest.raises(PolicyInputError, match="actions out of range"):
        pol.token_logps(torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(PolicyInputError, match="integer"):
        pol.log_probs(torch.tensor([0.0]))
    assert issubclass(PolicyInputError, ValueError)


def test_mlp_onehot_first_layer_columns_are_state_embeddings():
    pol = MLPPolicy(6, 4, hidden=5, seed=3)
    s = torch.tensor([0, 5, 2])
    w1, b1, w2, b2 = pol.layer1.weight, pol.layer1.bias, pol.layer2.weight, pol.layer2.bias
    expect = torch.stack([w2 @ torch.tanh(w1[:, int(i)] + b1) + b2 for i in s])
    torch.testing.assert_close(pol(s), expect, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(pol.probs().sum(-1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-14)
    assert isinstance(pol, EmbeddingPolicy)


def test_mlp_seed_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = MLPPolicy(4, 2, hidden=3, seed=7)
    after = torch.rand(1)
    assert torch.equal(after, expected_next)
    b = MLPPolicy(4, 2, hidden=3, seed=7)
    c = MLPPolicy(4, 2, hidden=3, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.layer1.weight, c.layer1.weight)


def test_mlp_class_conditioning():
    pol = MLPPolicy(3, 2, hidden=4, n_classes=2, seed=0)
    s = torch.tensor([[0, 1], [2, 2]])
    with pytest.raises(PolicyInputError, match="pass classes="):
        pol.log_probs(s)
    per_row = pol.log_probs(s, classes=torch.tensor([[0], [1]]))
    full = pol.log_probs(s, classes=torch.tensor([[0, 0], [1, 1]]))
    assert torch.equal(per_row, full)
    assert not torch.allclose(pol.probs(0), pol.probs(1))
    with pytest.raises(PolicyInputError, match="n_classes=0"):
        MLPPolicy(3, 2).log_probs(s, classes=torch.tensor(0))


def test_mlp_embedding_input_and_float32():
    pol = MLPPolicy(5, 3, hidden=4, input="embedding", embed_dim=2, seed=0, dtype=torch.float32, activation="relu")
    assert pol.embed(torch.tensor([1, 2])).shape == (2, 2)
    assert torch.equal(pol.embed(torch.tensor([1, 2])), pol.embedding.weight[[1, 2]])
    lp = pol.token_logps(torch.tensor([1, 2]), torch.tensor([0, 2]))
    assert lp.dtype == torch.float32 and bool((lp < 0).all())
    # by hand: embedding row -> linear -> relu -> linear -> log-softmax, picked at the action
    with torch.no_grad():
        w1, b1, w2, b2 = pol.layer1.weight, pol.layer1.bias, pol.layer2.weight, pol.layer2.bias
        expect = [torch.log_softmax(w2 @ torch.relu(w1 @ pol.embedding.weight[s] + b1) + b2, -1)[a]
                  for s, a in ((1, 0), (2, 2))]
    torch.testing.assert_close(lp.detach(), torch.stack(expect), rtol=1e-6, atol=1e-6)  # float32 rounding
    with pytest.raises(PolicyInputError, match="input must be"):
        MLPPolicy(5, 3, input="conv")


def test_mlp_sequence_logits_score_each_sequence_under_its_own_class():
    pol = MLPPolicy(3, 2, hidden=4, n_classes=2, seed=0)
    s = torch.tensor([[0, 1, 2], [2, 2, 0]])
    got = pol.sequence_logits(s, torch.tensor([0, 1]))
    assert got.shape == (2, 3, 2)
    # exactly the forward pass with each row's class repeated along the row (same shapes, same kernels)
    assert torch.equal(got, pol(s, torch.tensor([[0, 0, 0], [1, 1, 1]])))
    # and, up to float64 rounding of a differently batched matmul, each row scored alone under its class
    torch.testing.assert_close(got[1], pol(s[1], torch.ones(3, dtype=torch.long)), rtol=0, atol=1e-15)
    assert not torch.allclose(got[1], pol(s[1], torch.zeros(3, dtype=torch.long)))
    with pytest.raises(PolicyInputError, match="one per sequence"):
        pol.sequence_logits(s, torch.tensor([0, 1, 1]))
    plain = MLPPolicy(3, 2, hidden=4, seed=0)
    assert torch.equal(plain.sequence_logits(s), plain(s))


def test_mlp_tables_at_every_state():
    pol = MLPPolicy(4, 3, hidden=5, n_classes=2, seed=1)
    states = torch.arange(4)
    for c in (0, 1):
        logits = pol(states, torch.full((4,), c))
        assert torch.equal(pol.logits_table(c), logits)
        assert torch.equal(pol.probs(c), torch.softmax(logits, -1))
        assert torch.equal(pol.log_probs_table(c), torch.log_softmax(logits, -1))
        torch.testing.assert_close(pol.probs(c).sum(-1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-15)
