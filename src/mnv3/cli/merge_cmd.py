"""Join the output folders of 'mnv3 infer --shard K/N' runs into the files of one run.

Give every shard's --output-dir once (any order): the per-image files are concatenated in
shard order (byte for byte what one unsharded run writes), skipped.txt too, and top-1 / top-5
accuracy is recomputed over all shards into eval_result.txt. Shards of different runs (another
image list, model or --decode), a missing or repeated shard, or a folder that is not a shard
are refused before anything is written (exit code 3). infer.json lists the shards with their
own speeds; its seconds are the shards' summed (driver time, not the wall time of the whole).
Annotated copies (--save-images) stay in each shard's images/ folder.

example:
  mnv3 infer --model data/models/force_float32_false_8 --shard 1/2 --output-dir out/s1
  mnv3 infer --model data/models/force_float32_false_8 --shard 2/2 --output-dir out/s2
  mnv3 merge out/s1 out/s2 --output-dir out/all
"""

from __future__ import annotations

from mnv3.cli.common import add_parser as _add, human_print, write_json


def add_parser(sub):
    p = _add(sub, "merge", __doc__, run)
    p.add_argument("shards", nargs="+", metavar="SHARD_DIR",
                   help="the --output-dir of each 'mnv3 infer --shard K/N' run")
    p.add_argument("--output-dir", required=True, metavar="O",
                   help="where the merged result files go (not one of the shards)")
    p.add_argument("--json", default=None, metavar="F",
                   help="also write the merged summary as JSON ('-' = stdout)")
    return p


def run(args) -> int:
    from mnv3.shards import merge

    result = merge(args.shards, args.output_dir)
    say = human_print(args.json)
    say(f"merged {len(result.shards)} shards: {result.processed} images predicted, "
        f"{result.skipped} skipped (of {result.images})")
    if result.top1 is not None:
        say(f"top1 accuracy: {result.top1:f} ({result.top1_correct}/{result.labeled})")
        say(f"top5 accuracy: {result.top5:f} ({result.top5_correct}/{result.labeled})")
        if result.untrained:
            say(f"note: {result.untrained}")
    else:
        say("no labels given: predictions only (see results.jsonl)")
    below = result.shards[0].get("below_budget")
    if below:  # the shards ran a model shipped with --allow-below-budget, as infer says
        say(f"note: {below}")
    say(f"results in {result.output_dir}")
    write_json(args.json, result.to_dict())
    return 0
