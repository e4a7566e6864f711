"""Recompute top-1 / top-5 accuracy from the result files that 'mnv3 infer' (or the seed) wrote.

The seed's compute_top1_and_top5.py, same flags (its --result_label_file spellings work too):
an image counts as top-k correct when its `filename label` line from --result-label-file also
appears in the top-1 file (or among the five lines per image of the top-5 file). Prints
`top1 accuracy: x` / `top5 accuracy: y` and writes them to --top1andtop5-file when given.

example:
  mnv3 eval --result-label-file out/eval_labels.txt --result-1-file out/eval_result_1.txt \\
      --result-5-file out/eval_result_5.txt --top1andtop5-file out/eval_result.txt
"""

from __future__ import annotations

import sys

from mnv3.cli.common import add_parser as _add, human_print, write_json


def add_parser(sub):
    p = _add(sub, "eval", __doc__, run)
    p.add_argument("--result-label-file", "--result_label_file", dest="result_label_file",
                   required=True, metavar="F", help="'filename label' per image")
    p.add_argument("--result-1-file", "--result_1_file", dest="result_1_file", required=True,
                   metavar="F", help="'filename top1' per image")
    p.add_argument("--result-5-file", "--result_5_file", dest="result_5_file", required=True,
                   metavar="F", help="'filename index', five lines per image")
    p.add_argument("--top1andtop5-file", "--top1andtop5_file", dest="top1andtop5_file",
                   default=None, metavar="F", help="also write the two accuracy lines here")
    p.add_argument("--json", default=None, metavar="F",
                   help="also write the counts as JSON ('-' = stdout)")
    return p


def run(args) -> int:
    from mnv3.evaluation import evaluate_files

    result = evaluate_files(args.result_label_file, args.result_1_file, args.result_5_file,
                            args.top1andtop5_file)
    say = human_print(args.json)
    say(result.lines(), end="")
    if result.missing:
        print(f"warning: {result.missing} of {result.total} labelled images have no line in "
              f"{args.result_1_file}; they count as wrong", file=sys.stderr)
    untrained = _untrained(args.result_1_file)
    if untrained:  # the seed's two lines stay as they are on stdout; the caveat goes beside
        print(f"mnv3 eval: warning: {untrained}", file=sys.stderr)
    write_json(args.json, result.to_dict() | {"untrained": untrained})
    return 0


def _untrained(result_1_file: str) -> str | None:
    """The untrained-model note 'mnv3 infer' left in infer.json beside the result files."""
    import json
    from pathlib import Path

    from mnv3.data.files import read_text
    from mnv3.errors import DataError

    try:  # read_text: a FIFO named infer.json must not hang eval (issue 19)
        path = Path(result_1_file).parent / "infer.json"
        return json.loads(read_text(path, "result file", DataError))["untrained"]
    except (DataError, OSError, ValueError, KeyError, TypeError):  # not written by mnv3 infer
        return None
