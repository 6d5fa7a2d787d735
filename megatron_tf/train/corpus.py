"""The embedded default corpus: a seeded sparse Markov chain whose entropy rate is known exactly.

Why a Markov chain: a language model's cross-entropy on a stationary source cannot go below the
source's entropy rate, so with a synthetic source "how close to the floor" is a number, not a
guess. A first-order chain over a small vocabulary is learnable by a tiny GPT in minutes on a
CPU, which is what the demo and the tests need.

The corpus is one long stationary chain cut into documents of `doc_length` tokens and written as
a Megatron indexed dataset (`megatron.core.datasets.indexed_dataset`). Megatron's GPT dataset
shuffles documents, so at a document boundary the next token comes from the stationary
distribution instead of the chain; that happens once per `doc_length` tokens and is accounted
for in `loss_floor`. No end-of-document token is written: the chain itself never emits the
tokenizer's EOD id (`vocab_size - 1`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from megatron_tf.errors import ConfigError
from megatron_tf.megatron.datasets import write_indexed_dataset
from megatron_tf.outputs import CACHE_ENV, check_cache_dir

CORPUS_FORMAT = "timelyfreeze.corpus/1"


@dataclass(kw_only=True, slots=True, frozen=True)
class CorpusConfig:
    """What determines the synthetic corpus; equal configs give byte-identical files."""

    vocab_size: int = 128
    """Token ids are 0 .. vocab_size - 2; vocab_size - 1 is the (unused) EOD id."""
    successors: int = 4
    """Non-zero transitions per state (the chain's sparsity); lower means a lower floor."""
    concentration: float = 0.5
    """Dirichlet concentration of each state's transition weights (lower = more peaked)."""
    documents: int = 512
    """Number of documents."""
    doc_length: int = 2048
    """Tokens per document."""
    seed: int = 1234
    """Seed of the chain and of the sampled text."""

    def __post_init__(self) -> None:
        if self.vocab_size < 3:
            raise ConfigError(
                f"--vocab-size must be >= 3 for the embedded corpus (an end-of-document token and "
                f"at least two states), got {self.vocab_size}"
            )
        if not 1 <= self.successors <= self.vocab_size - 1:
            raise ValueError(
                f"corpus successors must lie in [1, {self.vocab_size - 1}], got {self.successors}"
            )
        if self.documents < 1 or self.doc_length < 2:
            raise ValueError("corpus needs documents >= 1 and doc_length >= 2")

    @property
    def states(self) -> int:
        return self.vocab_size - 1

    @property
    def tokens(self) -> int:
        return self.documents * self.doc_length

    def fingerprint(self) -> str:
        """Short hash naming the cache folder, so a changed config never reuses old files."""
        text = json.dumps({"format": CORPUS_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(kw_only=True, slots=True, frozen=True)
class MarkovChain:
    """A row-stochastic transition matrix and its stationary distribution."""

    transition: np.ndarray  # (states, states), rows sum to 1
    stationary: np.ndarray  # (states,)

    @property
    def entropy_rate(self) -> float:
        """H = sum_s pi(s) * H(P[s, :]) in nats: the floor of the per-token cross-entropy."""
        return float(self.stationary @ _row_entropies(self.transition))

    @property
    def stationary_entropy(self) -> float:
        """H(pi) in nats: the entropy of a token right after a document boundary."""
        return _entropy(self.stationary)


def make_chain(cfg: CorpusConfig) -> MarkovChain:
    """Draw the sparse chain: each state gets `successors` random next states, Dirichlet weights.

    A self-loop-free random sparse graph can be periodic or reducible; adding the state's
    successor s+1 (mod n) to every row makes the chain irreducible (it contains a Hamiltonian
    cycle), and the random other successors make it aperiodic in practice. The stationary
    distribution is computed by power iteration, checked to converge.
    """
    rng = np.random.default_rng(cfg.seed)
    n = cfg.states
    transition = np.zeros((n, n), dtype=np.float64)
    for s in range(n):
        others = np.delete(np.arange(n), (s + 1) % n)
        nxt = np.concatenate(
            [[(s + 1) % n], rng.choice(others, size=cfg.successors - 1, replace=False)]
        )
        transition[s, nxt] = rng.dirichlet(np.full(cfg.successors, cfg.concentration))
    # Dirichlet draws can underflow to exactly 0; keep every listed edge alive for irreducibility.
    transition = np.where(transition > 0, transition, 0.0)
    transition[np.arange(n), (np.arange(n) + 1) % n] += 1e-3
    transition /= transition.sum(axis=1, keepdims=True)
    return MarkovChain(transition=transition, stationary=_stationary(transition))


def sample_tokens(chain: MarkovChain, cfg: CorpusConfig) -> np.ndarray:
    """One stationary chain of `documents * doc_length` tokens, shape (documents, doc_length).

    Each document is its own walker started from the stationary distribution, so every document
    is a stationary segment of the chain; the walkers step together, which vectorises the loop.
    """
    return _walk(chain, cfg.documents, cfg.doc_length, np.random.default_rng(cfg.seed + 1))


def _walk(chain: MarkovChain, walkers: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """`walkers` stationary chains of `length` tokens stepping together (vectorised)."""
    states = chain.transition.shape[0]
    # Sparse view of the rows: (states, k) successor ids and their cumulative probabilities.
    k = int((chain.transition > 0).sum(axis=1).max())
    succ = np.argsort(-chain.transition, axis=1, kind="stable")[:, :k]
    cdf = np.cumsum(np.take_along_axis(chain.transition, succ, axis=1), axis=1)
    cdf[:, -1] = 1.0  # guard against rounding: every uniform draw must find a successor
    out = np.empty((walkers, length), dtype=np.int64)
    out[:, 0] = rng.choice(states, size=walkers, p=chain.stationary)
    for t in range(1, length):
        prev = out[:, t - 1]
        col = (cdf[prev] < rng.random(walkers)[:, None]).sum(axis=1)
        out[:, t] = succ[prev, col]
    return out


VALIDATION_STREAMS: dict[str, int] = {"validation": 7_919, "noise_probe": 104_729}
"""Seed offsets of the held-out sample streams drawn from a corpus's chain."""


def heldout_samples(cfg: CorpusConfig, samples: int, length: int, stream: str) -> np.ndarray:
    """`samples` fresh stationary segments of `length` tokens from the corpus's chain.

    Held out by construction: the text is drawn with its own seed, never written to the
    training files, so a validation loss on it measures the task (the chain), not memory of
    training batches. The same (corpus, stream) always gives the same array, so every run of a
    comparison is evaluated on identical tokens (paired differences, no batch-difficulty noise).
    """
    if samples < 1 or length < 2:
        raise ValueError("held-out samples need samples >= 1 and length >= 2")
    rng = np.random.default_rng([cfg.seed, VALIDATION_STREAMS[stream]])
    return _walk(make_chain(cfg), samples, length, rng)


@dataclass(kw_only=True, slots=True, frozen=True)
class CorpusInfo:
    """What the cache folder holds, written next to the data as `corpus.json`."""

    path_prefix: str
    """Megatron indexed-dataset prefix (`<prefix>.bin`, `<prefix>.idx`)."""
    config: CorpusConfig
    entropy_rate: float
    """Nats per token of the chain."""
    loss_floor: float
    """Nats per predicted token of the best possible model on shuffled documents."""

    def to_dict(self) -> dict[str, object]:
        return {
            "format": CORPUS_FORMAT,
            "path_prefix": self.path_prefix,
            "config": asdict(self.config),
            "entropy_rate": self.entropy_rate,
            "loss_floor": self.loss_floor,
        }


def loss_floor(chain: MarkovChain, doc_length: int) -> float:
    """Expected best cross-entropy per predicted token when documents are shuffled.

    Of every `doc_length` next-token predictions about one crosses into a new document, where
    the best guess given the previous token is no better than the stationary distribution;
    this bound uses H(pi) there (the Bayes-optimal mixture is slightly better, so the true
    floor lies between `entropy_rate` and this value, within H(pi) / doc_length).
    """
    h, h0 = chain.entropy_rate, chain.stationary_entropy
    return ((doc_length - 1) * h + h0) / doc_length


def default_cache_dir() -> Path:
    """`$TIMELYFREEZE_CACHE`, else `$XDG_CACHE_HOME/timelyfreeze`, else `~/.cache/timelyfreeze`."""
    if env := os.environ.get(CACHE_ENV):
        check_cache_dir(None)
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "timelyfreeze"


def ensure_corpus(cfg: CorpusConfig, cache_dir: Path | None = None) -> CorpusInfo:
    """Write the corpus under `cache_dir/corpus/<fingerprint>/` unless it is already there.

    Safe to call from several processes at once: each writes into its own temporary folder and
    renames it into place; the rename of a complete folder is atomic, and a loser of the race
    finds the winner's identical files and discards its own.
    """
    root = (cache_dir or default_cache_dir()) / "corpus"
    final = root / cfg.fingerprint()
    meta = final / "corpus.json"
    chain = make_chain(cfg)
    info = CorpusInfo(
        path_prefix=str(final / "text_document"),
        config=cfg,
        entropy_rate=chain.entropy_rate,
        loss_floor=loss_floor(chain, cfg.doc_length),
    )
    if meta.exists():
        return info
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        write_indexed_dataset(sample_tokens(chain, cfg), str(tmp / "text_document"))
        (tmp / "corpus.json").write_text(json.dumps(info.to_dict(), indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not meta.exists():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    return info


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _entropy(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def _row_entropies(matrix: np.ndarray) -> np.ndarray:
    safe = np.where(matrix > 0, matrix, 1.0)
    return -(matrix * np.log(safe)).sum(axis=1)


def _stationary(transition: np.ndarray, tol: float = 1e-13, max_iter: int = 100_000) -> np.ndarray:
    n = transition.shape[0]
    pi = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        nxt = pi @ transition
        if np.abs(nxt - pi).sum() < tol:
            return nxt / nxt.sum()
        pi = nxt
    raise RuntimeError("stationary distribution did not converge (chain periodic?)")
