"""``transferkit review``: the suspected label errors, duplicates and outliers of a dataset, and a page to fix them."""

from __future__ import annotations

import argparse

from transferkit.cli._options import UsageError


def review(args: argparse.Namespace) -> int:
    from transferkit._review import apply_plan, plan_decisions, undo_decisions
    from transferkit.data._images import printable

    if args.undo:
        if args.apply:
            raise UsageError("--undo and --apply together: undo the last apply first, then apply again.")
        for line in undo_decisions(args.data_dir):
            print(printable(line))
        return 0
    if args.apply:
        plan = plan_decisions(args.apply, args.data_dir)
        if not plan.actions:
            print(f"Nothing to do: these decisions were already carried out ({len(plan.done)} changes; "
                  f"`transferkit review {args.data_dir} --undo` puts them back)." if plan.done else
                  f"Nothing to do: {args.apply} decides to keep every image it lists.")
            return 0
        for action in plan.actions:
            print(printable(action.describe()))
        if not args.yes:
            print(f"{len(plan.actions)} changes planned, none made. Run again with --yes to make them "
                  "(nothing is deleted: removed images go to a quarantine folder beside the data; --undo puts "
                  "everything back).")
            return 1
        log = apply_plan(plan)
        print(f"Made {len(plan.actions)} changes; the undo log is {log} (`transferkit review {args.data_dir} "
              "--undo` puts everything back).")
        return 0
    if args.out is None:
        raise UsageError("transferkit review needs --out DIR (where the lists and review.html go), "
                         "or --apply decisions.csv, or --undo.")
    from transferkit._review import review as run_review

    weights = None if args.weights in ("none", "None") else args.weights
    result = run_review(args.data_dir, backbone=args.backbone, weights=weights, image_size=args.image_size,
                        run=args.run, against=args.against, out=args.out, folds=args.folds, ranking=args.ranking,
                        duplicate_threshold=args.threshold, batch_size=args.batch_size, seed=args.seed)
    print(result.summary())
    return 0
