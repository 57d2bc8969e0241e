"""``transferkit backbones``: the registry as a table, JSON or Markdown."""

from __future__ import annotations

import argparse
import json
from typing import Any

from transferkit.cli._text import table


def backbones(args: argparse.Namespace) -> int:
    import transferkit as tk
    from transferkit.backbones._kerashub import INSTALL, is_installed, list_kerashub_presets

    rows = [tk.get_backbone(n).describe() for n in tk.list_backbones(args.filter, include_test=args.all)]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(backbone_markdown(rows))
    else:
        print(table(rows, ("name", "family", "input_size", "params", "feature_dim", "preprocessing")))
        print(f"\n{len(rows)} backbones")
    if args.json or args.markdown:
        return 0
    presets = list_kerashub_presets(args.filter)
    if presets:
        print("\nKerasHub presets (pass the name as --backbone; a preset folder works too):\n")
        print(table(presets, ("name", "family", "params", "weights")))
        print(f"\n{len(presets)} presets")
    elif not is_installed():
        print(f"\nKerasHub presets: not available (keras-hub is not installed). Fix: {INSTALL}")
    return 0


def backbone_markdown(rows: list[dict[str, Any]]) -> str:
    """The backbone table as Markdown (docs/backbones.md holds this output)."""
    lines = ["| name | family | input size | parameters | feature size | preprocessing | constructor |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{r['name']}` | {r['family']} | {r['input_size']} | {r['params']} | {r['feature_dim']} | "
              f"{r['preprocessing']} | `{r['description']}` |" for r in rows]
    return "\n".join(lines)
