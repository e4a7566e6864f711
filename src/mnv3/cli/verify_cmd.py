"""Re-check a built model's accuracy on this CPU against its float32 source.

int8 results depend on the CPU (AVX2 without VNNI saturates where AVX-512 VNNI does not), so
a model validated on one machine is re-checked on the one it is deployed to: top-1 agreement
and logit cosine against the float32 ONNX the model was built from (meta.json's source, checked
by sha256), held to the accuracy budget the model was built with. Nothing is changed unless
--update is given (then meta.json's fidelity and ISA are replaced by this measurement).

exit codes: 0 within budget, 9 below budget, others as every mnv3 command.

examples:
  mnv3 verify data/models/qint8_mixed_float16_false_1 --images ../shared/datasets/imagenet-sample-500/images
  mnv3 verify MODEL --images DIR --num 100 --json verify.json
"""

from __future__ import annotations

import sys

from mnv3.cli.common import add_parser as _add, write_json


def add_parser(sub):
    p = _add(sub, "verify", __doc__, run)
    p.add_argument("model", metavar="MODEL", help="a built model directory")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="a folder of images like the ones the model will see")
    p.add_argument("--num", type=int, default=200, metavar="N",
                   help="images to use (a seeded sample; default 200)")
    p.add_argument("--source", default=None, metavar="ONNX",
                   help="the float32 ONNX it was built from (default: meta.json's source path)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="engine threads (default: the engine's choice)")
    p.add_argument("--update", action="store_true",
                   help="write this measurement into the model's meta.json")
    p.add_argument("--json", default=None, metavar="F", help="also write the result as JSON "
                   "('-' = stdout, and nothing else there)")
    return p


def run(args) -> int:
    from mnv3.calibration import regular_images, split_calibration
    from mnv3.sysinfo import isa_label
    from mnv3.verify import verify

    files, _ = split_calibration(regular_images(args.images), max(1, args.num))
    result = verify(args.model, files, source=args.source, threads=args.threads,
                    update=args.update)
    f = result["fidelity"]
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"{args.model} on this CPU ({isa_label(result['isa'])}; validated on "
          f"{isa_label(result['built_on_isa']) if result['built_on_isa'] else 'unknown'}): "
          f"top-1 agreement {f['top1_agreement']:.2%} (expected "
          f"{f['top1_agreement_expected']:.2%}), cosine mean {f['cosine_mean']:.4f} min "
          f"{f['cosine_min']:.4f} on {f['inputs']}", file=out)
    b = result["budget"]
    verdict = "within" if result["within_budget"] else "BELOW"
    print(f"{verdict} its budget (agreement >= {b['min_agreement']:.2%}, cosine >= "
          f"{b['min_cosine']:.4f})" + ("" if result["within_budget"]
                                       else ": " + "; ".join(result["shortfalls"]))
          + ("; meta.json updated" if result["updated"] else ""), file=out)
    write_json(args.json, result)
    return 0 if result["within_budget"] else 9
