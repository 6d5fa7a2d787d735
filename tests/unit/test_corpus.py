"""The embedded corpus: its stated entropy rate is the chain's, and files are deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_tf.train.corpus import (
    CorpusConfig,
    ensure_corpus,
    loss_floor,
    make_chain,
    sample_tokens,
)


def test_chain_is_stochastic_sparse_and_stationary() -> None:
    cfg = CorpusConfig(vocab_size=64, successors=3)
    chain = make_chain(cfg)
    p, pi = chain.transition, chain.stationary
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert ((p > 0).sum(axis=1) <= 3).all()
    np.testing.assert_allclose(pi @ p, pi, atol=1e-12)  # pi is stationary
    # H = sum_s pi(s) H(P[s]) is below log(successors): at most 3 choices per state.
    assert 0 < chain.entropy_rate < np.log(3)


def test_empirical_conditional_entropy_matches_the_stated_rate() -> None:
    """The plug-in estimate of H(X_t | X_t-1) from sampled text agrees with the exact rate."""
    cfg = CorpusConfig(vocab_size=32, successors=4, documents=200, doc_length=2000, seed=7)
    chain = make_chain(cfg)
    docs = sample_tokens(chain, cfg)
    n = cfg.states
    counts = np.zeros((n, n))
    for doc in docs:
        np.add.at(counts, (doc[:-1], doc[1:]), 1)
    rows = counts.sum(axis=1, keepdims=True)
    cond = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    logs = np.log(np.where(cond > 0, cond, 1.0))
    estimate = -(counts / counts.sum() * logs).sum()
    # 400k transitions over 31 states: the estimate's error is well under 0.01 nats.
    assert estimate == pytest.approx(chain.entropy_rate, abs=0.01)
    # No token ever equals the EOD id (vocab_size - 1).
    assert docs.max() < cfg.vocab_size - 1


def test_loss_floor_adds_one_boundary_per_document() -> None:
    chain = make_chain(CorpusConfig(vocab_size=16))
    h, h0 = chain.entropy_rate, chain.stationary_entropy
    assert loss_floor(chain, 1) == pytest.approx(h0)
    assert loss_floor(chain, 4) == pytest.approx((3 * h + h0) / 4)


def test_corpus_files_are_deterministic_and_cached(tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    cfg = CorpusConfig(vocab_size=64, documents=8, doc_length=128)
    a = ensure_corpus(cfg, tmp_path / "a")
    b = ensure_corpus(cfg, tmp_path / "b")
    assert Path(a.path_prefix + ".bin").read_bytes() == Path(b.path_prefix + ".bin").read_bytes()
    ds = IndexedDataset(a.path_prefix)
    assert len(ds) == 8 and all(len(ds[i]) == 128 for i in range(8))
    mtime = Path(a.path_prefix + ".bin").stat().st_mtime_ns
    assert ensure_corpus(cfg, tmp_path / "a") == a  # second call: cache hit, nothing rewritten
    assert Path(a.path_prefix + ".bin").stat().st_mtime_ns == mtime
    # Another seed is another folder, never a stale reuse.
    other = ensure_corpus(
        CorpusConfig(vocab_size=64, documents=8, doc_length=128, seed=9), tmp_path / "a"
    )
    assert other.path_prefix != a.path_prefix
    # No temporary folders are left behind.
    assert [p.name for p in (tmp_path / "a" / "corpus").iterdir() if p.name.startswith(".")] == []


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="successors must lie in"):
        CorpusConfig(vocab_size=8, successors=8)
