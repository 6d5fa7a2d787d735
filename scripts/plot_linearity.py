"""Plot backward time against freeze ratio from a profile measured with `--linearity`.

    .venv/bin/python scripts/plot_linearity.py profile.json docs/img/profile_linearity.png

One panel per (rank, chunk): the measured medians at ratios 0, 0.25, 0.5, 0.75, 1 and the
fitted line with its R^2 (the LP assumes this line: backward - r * (backward - frozen)).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from megatron_tf.formats.profile import load_profile  # noqa: E402


def main(profile_path: str, out: str) -> None:
    profile = load_profile(profile_path)
    if not profile.linearity:
        sys.exit(f"{profile_path} has no linearity data: measure it with --linearity")
    ratios = profile.linearity["ratios"]
    stages = profile.linearity["stages"]
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.2), squeeze=False)
    for ax, st in zip(axes[0], stages, strict=True):
        ys = [y * 1e3 for y in st["backward"]]
        ax.plot(ratios, ys, "o", label="measured median")
        line = [(st["intercept"] + st["slope"] * r) * 1e3 for r in ratios]
        ax.plot(ratios, line, "-", label=f"fit, R² = {st['r2']:.3f}")
        ax.set_title(f"rank {st['rank']}, chunk {st['chunk']}")
        ax.set_xlabel("freeze ratio")
        ax.set_ylabel("backward (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(f"{profile.spec.describe()}: {profile.provenance.get('device', '')}", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
