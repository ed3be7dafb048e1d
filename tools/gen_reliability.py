"""Write docs/reliability.md: run every case of the CLI's bad-input matrix and record what layerscope says.

    python3 tools/gen_reliability.py            # rewrite docs/reliability.md (about 20 s on a 2-core CPU)
    python3 tools/gen_reliability.py --out X.md # write elsewhere

The cases live in tests/bad_inputs.py; tests/test_bad_input_matrix.py checks them and fails when the page
is stale. Needs ../shared/models/stories260K; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # bad_inputs and tiny_models live with the tests


def capture_all():
    """case id -> what the case did (one-line message, normalised; exit code; results left behind)."""
    import bad_inputs as bi

    captured = {}
    with tempfile.TemporaryDirectory(prefix="layerscope-reliability-") as tmp:
        ws = bi.Workspace(Path(tmp))
        for case in bi.CASES:
            outcome, folder = bi.run_case(case, ws)
            captured[case.id] = bi.Captured(
                bi.normalise(outcome.message(case.fragment), ws), outcome.exit_code, bi.leftover_results(folder)
            )
            print(f"{case.id}: exit {outcome.exit_code}", file=sys.stderr)
    return captured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="page to write (default docs/reliability.md)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import bad_inputs as bi
    import torch

    if not (bi.STORIES / "config.json").exists():
        print(f"gen_reliability: error: {bi.STORIES} not found (the cases load stories260K)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # tiny models: one thread is faster than two, and the numbers do not depend on it
    out = Path(args.out) if args.out else bi.DOC
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(bi.render_doc(capture_all()), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
