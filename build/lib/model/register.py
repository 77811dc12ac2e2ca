"""Register a moving NIfTI volume onto a fixed one with a trained float checkpoint (torch).

    python -m model.register --ckpt runs/demo/train/model.pt \\
        --fixed F.nii.gz --moving M.nii.gz --out W.nii.gz [--ddf D.nii.gz] \\
        [--moving-labels L.nii.gz --out-labels WL.nii.gz]

The same registration as the deployed one (model/registration.py: the checkpoint config's
working grid, global stage and [refine]), with the float network in torch instead of the
exported int8 one; `python -m hw.register` registers with the export, without torch, and says
what each output holds. W, D and WL lie on the fixed image's grid with its affine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.cli import UsageError, check_outputs, run_cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--fixed", required=True, type=Path)
    ap.add_argument("--moving", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ddf", type=Path, help="also write the displacement field (world mm) here")
    ap.add_argument("--moving-labels", type=Path, help="a label map on the moving image's grid")
    ap.add_argument("--out-labels", type=Path, help="where the warped moving labels go")
    a = ap.parse_args(argv)

    def body():
        if bool(a.moving_labels) != bool(a.out_labels):
            raise UsageError("--moving-labels and --out-labels go together")
        check_outputs({"--out": a.out, "--ddf": a.ddf, "--out-labels": a.out_labels},
                      {"--ckpt": a.ckpt, "--fixed": a.fixed, "--moving": a.moving, "--moving-labels": a.moving_labels})
        from model.checkpoint import load_checkpoint, model_from_checkpoint
        from model.evaluate import network_registration
        from model.localnet import fold_batchnorm

        net, cfg = model_from_checkpoint(load_checkpoint(a.ckpt), str(a.ckpt))
        scan = network_registration(fold_batchnorm(net), cfg).register_scans(a.fixed, a.moving, a.moving_labels)
        written = scan.write(a.out, a.ddf, a.out_labels)
        print(f"[register] wrote {', '.join(map(str, written))}", file=sys.stderr)
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
