"""The planning layers (schedule, solve, formats) must run without torch or megatron."""

import subprocess
import sys

TORCH_FREE = ["megatron_tf.schedule", "megatron_tf.solve", "megatron_tf.formats"]


def test_planning_layers_import_no_torch() -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    for mod in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        importlib.import_module(mod.name)\n"
        "bad = [m for m in ('torch', 'megatron') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
