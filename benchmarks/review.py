"""`transferkit review` on planted problems: label errors, near duplicates, retraining, wall time.

    .venv/bin/python benchmarks/review.py [--parts labels duplicates training timing]
                                          [--per-class 100] [--seeds 1 2] [--stamps-seeds 1 2]
                                          [--rates 0.05 0.10] [--timing 2000 10000] [--json F]

Every `transferkit review` is a whole command (`python -m transferkit.cli review DIR --out OUT
--backbone mobilenet --weights imagenet --image-size N`), timed from process start to files written.

  labels      label errors planted in Fashion-MNIST subsets (`--per-class` images a class from images
              50,000–59,999 of ../shared's training file, 96 px; one subset per `--seeds`) and in
              stamps5 (167 photos, 224 px; one flip draw per `--stamps-seeds`) and, with
              `--digits-seeds`, scikit-learn's digits (1,700 images, 96 px): a share `--rates` of
              the images, drawn uniformly at random (seeded), moved to another class drawn uniformly.
              The command is run with each `--rankings` (default both: `self_confidence` and
              `normalized_margin`); its label_issues.csv is scored against the flips: precision,
              recall, and precision at k = the number of flips (how well the order ranks). Beside it,
              on the SAME features (MobileNet v1 pooled, computed in process as the command computes them), cleanlab's
              `cleanlab.filter.find_label_issues(labels, pred_probs)` with default settings, fed the
              out-of-fold probabilities of scikit-learn's LogisticRegression (standardised features,
              5-fold `cross_val_predict`); its precision at k uses `return_indices_ranked_by=
              "self_confidence"`. cleanlab is AGPL: it is imported here only, never by transferkit.
              A last row per dataset and rate pools the draws (all flips, all flagged images).
  swap        (not in the default run) in process, on the same features: the solved head's and
              LogisticRegression's out-of-fold probabilities each through transferkit's threshold rule,
              transferkit's prune by noise rate and cleanlab's filter, to tell which makes a difference.
  rules       (not in the default run) in process, on the same features, pooled over the draws: precision
              and recall of the threshold rule at several shares of the class threshold (`--shares`), of
              prune by noise rate (both on the solved head's out-of-fold probabilities) and of cleanlab
              as in `labels`. `--flip-offset K` draws the flips with seed K + the subset's seed: the
              default share 0.3 was chosen with offset 0 and checked with offset 100.
  leaks       (not in the default run) in process: 80 Fashion-MNIST images of the first subset copied
              with edits (as in `duplicates`) among its 1,000 test images, and 40 stamps5 photos of a
              random half copied with edits (exact, JPEG 75, halved, cropped by 5 % a side) beside the
              other half; how many copies the 0.90 threshold alone finds across the two sets, how
              many the leak rule finds (`transferkit._review._duplicates.leaks`), and how many other
              images of the second set each pairs with an image of the first.
  duplicates  20 images of the first Fashion-MNIST subset copied into a "test" folder of 1,000 other
              images with edits (5 each: exact copy, JPEG quality 75, resized to 75 % / 200 %, cropped
              by 1 pixel of 28 on each side), then `review TRAIN --against TEST`: recall of the
              planted pairs in duplicates.csv, the other pairs flagged across and within.
  training    test accuracy of `transferkit train DIR --backbone mobilenet --weights FILE
              --image-size 96` + `transferkit evaluate RUN TEST --json` (accuracy.py's transferkit
              recipe) trained on the first subset with 10 % of its labels flipped, on the same with
              the images of label_issues.csv removed, and on the clean subset; 100 test images a class.
  timing      the command's wall time on `--timing` Fashion-MNIST images (the whole training file,
              an equal number a class), 96 px.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from common import MOBILENET_NOTOP, SHARED, markdown_table, run_timed, shared_missing, write_fashion_subset
from PIL import Image
from selection import write_task

import transferkit as tk

STAMPS5 = SHARED / "data" / "stamps5"
BACKBONE = ["--backbone", "mobilenet", "--weights", "imagenet"]


def digits_datasets(tmp: Path, seeds: list[int]) -> list[tuple[str, tk.ImageFiles, int, int]]:
    """scikit-learn's digits, 170 images a class (8 × 8 pixels), once for every flip draw in ``seeds``."""
    if not seeds:
        return []
    from accuracy import write_digits

    files = tk.scan_folder(write_digits(tmp / "digits", seed=0, per_class=170)[0])
    return [("digits", files, 96, s) for s in seeds]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "transferkit.cli", *args]


def review_command(data: Path, out: Path, size: int, *extra: str) -> tuple[float, float, str]:
    """Run `transferkit review` as a whole command: wall seconds, peak RSS (MB), standard output."""
    return run_timed(cli("review", str(data), "--out", str(out), *BACKBONE, "--image-size", str(size), *extra))


def features_of(files: tk.ImageFiles, size: int) -> np.ndarray:
    """The pooled MobileNet v1 features `transferkit review` computes, in process."""
    from transferkit._review._find import _feature_model, embed

    model, size = _feature_model(backbone="mobilenet", weights="imagenet", image_size=size, run=None)
    return embed(files, model, image_size=size)


def flip(labels: np.ndarray, classes: int, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy labels and the flipped rows: round(rate · n) rows, each moved to another class at random."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), int(round(rate * len(labels))), replace=False))
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, classes, len(rows))) % classes
    return noisy, rows


def link_folder(root: Path, paths: list[str], labels: np.ndarray, names: tuple[str, ...] | list[str],
                keep: np.ndarray | None = None) -> Path:
    """A class folder of links to ``paths`` under the classes ``labels`` give (rows in ``keep`` only)."""
    for i, (path, label) in enumerate(zip(paths, labels)):
        if keep is not None and not keep[i]:
            continue
        target = root / names[int(label)] / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(path).resolve())
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cleanlab_issues(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """cleanlab's default find_label_issues on LogisticRegression out-of-fold probabilities: mask, ranked rows, s."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")
    mask = find_label_issues(labels, probabilities)
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    return mask, np.asarray(ranked), time.perf_counter() - start


def scores(flagged_in_order: list[int], flips: np.ndarray) -> dict[str, float]:
    truth = set(int(i) for i in flips)
    hits = [i in truth for i in flagged_in_order]
    k = len(truth)
    return {"flagged": len(hits), "precision": sum(hits) / max(1, len(hits)), "recall": sum(hits) / max(1, k),
            "precision_at_k": sum(hits[:k]) / max(1, k)}


def label_part(tmp: Path, datasets: list[tuple[str, tk.ImageFiles, int, int]], rates: list[float],
               rankings: list[str], rows: list[dict], results: list[dict]) -> None:
    """Planted label errors: the command (each ranking) against cleanlab on the same features."""
    pooled: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    for name, files, size, noise_seed in datasets:
        labels = np.asarray(files.labels).astype(int)
        classes = len(files.class_names)
        features = features_of(files, size)
        index = {Path(p).name: i for i, p in enumerate(files.paths)}
        for rate in rates:
            noisy, flips = flip(labels, classes, rate, noise_seed)
            tag = f"{name}_r{int(rate * 100)}_s{noise_seed}"
            data = link_folder(tmp / tag / "data", files.paths, noisy, files.class_names)
            ours: dict[str, dict] = {}
            wall = {}
            for ranking in rankings:
                out = tmp / tag / f"review_{ranking}"
                wall[ranking], _, _ = review_command(data, out, size, "--ranking", ranking)
                order = [index[Path(r["path"]).name] for r in read_rows(out / "label_issues.csv")]
                ours[ranking] = {"rows": order, **scores(order, flips)}
            same = len({tuple(sorted(o["rows"])) for o in ours.values()}) == 1
            mask, ranked, lab_seconds = cleanlab_issues(features, noisy, noise_seed)
            theirs = scores(list(ranked), flips)
            theirs_set = scores(list(np.flatnonzero(mask)), flips)
            result = {"dataset": name, "images": len(labels), "rate": rate, "noise_seed": noise_seed,
                      "flips": len(flips), **{f"ours_{r}": ours[r] for r in rankings}, "same_flagged_set": same,
                      "cleanlab_mask": theirs_set, "cleanlab_ranked": theirs,
                      "command_seconds": wall, "cleanlab_seconds": lab_seconds}
            for r in rankings:
                result[f"ours_{r}"].pop("rows")
            results.append(result)
            first = ours[rankings[0]]
            group = pooled.setdefault((name.rsplit("_", 1)[0] if name.startswith("fashion") else name, rate),
                                      {"ours": np.zeros(3), "cleanlab": np.zeros(3)})
            group["ours"] += [first["precision"] * first["flagged"], first["flagged"], len(flips)]
            group["cleanlab"] += [theirs_set["precision"] * theirs_set["flagged"], theirs_set["flagged"], len(flips)]
            row = {"data": f"{name} ({len(labels)})", "flips": f"{int(rate * 100)} % ({len(flips)}), seed {noise_seed}",
                   "ours P / R": f"{first['precision']:.2f} / {first['recall']:.2f} ({first['flagged']})",
                   "cleanlab P / R": f"{theirs_set['precision']:.2f} / {theirs_set['recall']:.2f} "
                   f"({theirs_set['flagged']})"}
            for r in rankings:
                row[f"P@k {r}"] = f"{ours[r]['precision_at_k']:.2f}"
            row["P@k cleanlab"] = f"{theirs['precision_at_k']:.2f}"
            row["command"] = f"{wall[rankings[0]]:.0f} s"
            rows.append(row)
            print(rows[-1], flush=True)
    for (name, rate), group in pooled.items():
        (hits, flagged, flips_n), (c_hits, c_flagged, _) = group["ours"], group["cleanlab"]
        rows.append({"data": f"{name}, all draws", "flips": f"{int(rate * 100)} % ({int(flips_n)})",
                     "ours P / R": f"{hits / max(1, flagged):.3f} / {hits / flips_n:.3f} ({int(flagged)})",
                     "cleanlab P / R": f"{c_hits / max(1, c_flagged):.3f} / {c_hits / flips_n:.3f} ({int(c_flagged)})"})
        results.append({"pooled": name, "rate": rate, "ours": group["ours"].tolist(),
                        "cleanlab": group["cleanlab"].tolist()})
        print(rows[-1], flush=True)


def swap_part(datasets: list[tuple[str, tk.ImageFiles, int, int]], rates: list[float]) -> list[dict]:
    """In process, on the same features: which half makes the difference, the probabilities or the filter?

    Both probability sources (transferkit's solved head out of fold; scikit-learn's LogisticRegression
    on standardised features, 5-fold cross_val_predict) through both filters (transferkit's
    find_label_issues; cleanlab's, default settings): precision / recall (flagged) of each.
    """
    from cleanlab.filter import find_label_issues as cleanlab_filter
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit._review._confident import find_label_issues, out_of_fold

    rows = []
    for name, files, size, noise_seed in datasets:
        labels = np.asarray(files.labels).astype(int)
        classes = len(files.class_names)
        features = features_of(files, size)
        for rate in rates:
            noisy, flips = flip(labels, classes, rate, noise_seed)
            sources = {
                "solved head": out_of_fold(features, noisy, classes, seed=0),
                "sklearn LR": cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                                                features, noisy, method="predict_proba",
                                                cv=StratifiedKFold(5, shuffle=True, random_state=noise_seed)),
            }
            row = {"data": f"{name} ({len(labels)})", "flips": f"{int(rate * 100)} % ({len(flips)}), seed {noise_seed}"}
            for source, probabilities in sources.items():
                ours = list(find_label_issues(noisy, probabilities).indices)
                prune = list(find_label_issues(noisy, probabilities, rule="prune_by_noise_rate").indices)
                theirs = list(np.flatnonzero(cleanlab_filter(noisy, probabilities)))
                for filter_name, flagged in (("threshold", ours), ("prune", prune), ("cleanlab", theirs)):
                    got = scores(flagged, flips)
                    row[f"{source} → {filter_name}"] = (f"{got['precision']:.2f} / {got['recall']:.2f} "
                                                        f"({got['flagged']})")
                log_loss = -np.mean(np.log(np.maximum(probabilities[np.arange(len(noisy)), noisy], 1e-12)))
                row[f"{source} log loss"] = f"{log_loss:.3f}"
            rows.append(row)
            print(row, flush=True)
    return rows


def rules_part(datasets: list[tuple[str, tk.ImageFiles, int, int]], rates: list[float], shares: list[float],
               offset: int) -> list[dict]:
    """In process: pooled precision / recall of each rule and share, and of cleanlab, over the draws."""
    from transferkit._review._confident import find_label_issues, out_of_fold

    totals: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    features_by_name: dict[str, np.ndarray] = {}
    for name, files, size, noise_seed in datasets:
        labels = np.asarray(files.labels).astype(int)
        classes = len(files.class_names)
        if name not in features_by_name:
            features_by_name[name] = features_of(files, size)
        features = features_by_name[name]
        for rate in rates:
            noisy, flips = flip(labels, classes, rate, noise_seed + offset)
            probabilities = out_of_fold(features, noisy, classes, seed=0)
            flagged = {f"share {share:g}": find_label_issues(noisy, probabilities, share=share).indices
                       for share in shares}
            flagged["prune by noise rate"] = find_label_issues(noisy, probabilities,
                                                               rule="prune_by_noise_rate").indices
            flagged["cleanlab"] = np.flatnonzero(cleanlab_issues(features, noisy, noise_seed)[0])
            group = totals.setdefault((name.rsplit("_", 1)[0] if name.startswith("fashion") else name, rate), {})
            for rule, rows in flagged.items():
                hits = len(set(rows.tolist()) & set(flips.tolist()))
                group[rule] = group.get(rule, np.zeros(3)) + np.array([hits, len(rows), len(flips)])
            print(name, noise_seed, rate, flush=True)
    table = []
    for (name, rate), group in totals.items():
        row = {"data": name, "flips": f"{int(rate * 100)} % ({int(group['cleanlab'][2])})"}
        for rule, (hits, count, planted) in group.items():
            row[rule] = f"{hits / max(1, count):.3f} / {hits / planted:.3f}"
        table.append(row)
        print(row, flush=True)
    return table


def leaks_part(tmp: Path, train: Path, test: Path) -> list[dict]:
    """In process: planted copies across two sets found by the threshold alone and by the leak rule."""
    from transferkit._review._duplicates import leaks, near_duplicates

    rows = []
    # Fashion-MNIST: 80 edited copies of training images beside the 1,000 test images
    files, others = tk.scan_folder(train), tk.scan_folder(test)
    chosen = np.random.default_rng(7).choice(len(files), 80, replace=False)
    planted_dir = tmp / "leaks_fashion"
    sources = {}
    for n, i in enumerate(chosen):
        edit = ("copy", "jpeg75", "resize", "crop")[n % 4]
        target = edit_copy(Path(files.paths[i]), planted_dir / ("b" if n % 2 else "a"), edit, n)
        sources[target.name] = int(i)
    planted = tk.scan_folder(planted_dir)
    a = features_of(files, 96)
    b = np.concatenate([features_of(planted, 96), features_of(others, 96)])
    truth = {(sources[Path(p).name], k) for k, p in enumerate(planted.paths)}
    rows.append(leak_row("Fashion-MNIST, 28 px", a, b, truth, len(planted), leaks, near_duplicates))
    # stamps5: 40 edited copies of photos of one random half beside the other half
    stamps = tk.scan_folder(STAMPS5)
    order = np.random.default_rng(3).permutation(len(stamps))
    first, second = order[:84], order[84:]
    stamps_dir = tmp / "leaks_stamps"
    sources = {}
    for n, i in enumerate(first[:40]):
        edit = ("copy", "jpeg75", "half", "crop5")[n % 4]
        rgba = Image.open(stamps.paths[i]).convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))  # on white, as transferkit reads transparent images
        image.paste(rgba, mask=rgba.split()[3])
        folder = stamps_dir / ("b" if n % 2 else "a")
        folder.mkdir(parents=True, exist_ok=True)
        w, h = image.size
        if edit == "jpeg75":
            target = folder / f"{n}.jpg"
            image.save(target, quality=75)
        else:
            target = folder / f"{n}.png"
            if edit == "half":
                image = image.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC)
            elif edit == "crop5":
                image = image.crop((w // 20, h // 20, w - w // 20, h - h // 20))
            image.save(target)
        sources[target.name] = n
    planted = tk.scan_folder(stamps_dir)
    everything = features_of(stamps, 224)
    a = everything[first]
    b = np.concatenate([features_of(planted, 224), everything[second]])
    truth = {(sources[Path(p).name], k) for k, p in enumerate(planted.paths)}
    rows.append(leak_row("stamps5", a, b, truth, len(planted), leaks, near_duplicates))
    return rows


def leak_row(name: str, a: np.ndarray, b: np.ndarray, truth: set, planted: int, leaks: Any,
             near_duplicates: Any) -> dict:
    threshold_only = {(i, j) for i, j, _ in near_duplicates(a, b)}
    rule = {(i, j) for i, j, _ in leaks(a, b)}
    row = {"data": name, "planted": planted, "others": len(b) - planted,
           "found at 0.90": len(truth & threshold_only), "found by the leak rule": len(truth & rule),
           "others paired at 0.90": len({j for _, j in threshold_only if j >= planted}),
           "others paired by the rule": len({j for _, j in rule if j >= planted})}
    print(row, flush=True)
    return row


def edit_copy(source: Path, target_dir: Path, edit: str, number: int) -> Path:
    image = Image.open(source).convert("L")
    target_dir.mkdir(parents=True, exist_ok=True)
    stem = f"planted_{edit}_{number}_{source.stem}"
    if edit == "copy":
        target = target_dir / f"{stem}.png"
        image.save(target)
    elif edit == "jpeg75":
        target = target_dir / f"{stem}.jpg"
        image.save(target, quality=75)
    elif edit == "resize":
        side = 21 if number % 2 else 56  # 75 % or 200 % of 28
        target = target_dir / f"{stem}.png"
        image.resize((side, side), Image.BICUBIC).save(target)
    else:  # crop one pixel of 28 on each side
        target = target_dir / f"{stem}.png"
        image.crop((1, 1, image.width - 1, image.height - 1)).save(target)
    return target


def duplicates_part(tmp: Path, train: Path, test: Path, results: dict) -> list[dict]:
    files = tk.scan_folder(train)
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(files), 20, replace=False)
    other = tmp / "dup_test"
    test_files = tk.scan_folder(test)
    link_folder(other, test_files.paths, np.asarray(test_files.labels), test_files.class_names)
    planted: dict[str, tuple[str, str]] = {}  # test path -> (train path, edit)
    for n, i in enumerate(chosen):
        edit = ("copy", "jpeg75", "resize", "crop")[n % 4]
        source = Path(files.paths[i])
        target = edit_copy(source, other / files.class_names[files.labels[i]], edit, n)
        planted[str(target.resolve())] = (str(Path(files.paths[i]).resolve()), edit)
    out = tmp / "dup_review"
    seconds, _, _ = review_command(train, out, 96, "--against", str(other))
    pairs = read_rows(out / "duplicates.csv")
    train_paths = {str(Path(p).resolve()) for p in files.paths}
    found: dict[str, float] = {}
    across_other, within = 0, 0
    for row in pairs:
        a, b = str(Path(row["path_a"]).resolve()), str(Path(row["path_b"]).resolve())
        if a in train_paths and b not in train_paths:
            if b in planted and planted[b][0] == a:
                found[b] = float(row["similarity"])
            else:
                across_other += 1
        else:
            within += 1
    # the similarity of every planted pair, from the same features in process
    from transferkit._review._duplicates import normalized

    pair_list = list(planted.items())
    both = tk.ImageFiles(paths=tuple([p[1][0] for p in pair_list] + [p[0] for p in pair_list]),
                         labels=np.zeros(2 * len(pair_list), dtype=np.int64), class_names=("x",))
    unit = normalized(features_of(both, 96))
    sims = np.sum(unit[:len(pair_list)] * unit[len(pair_list):], axis=1)
    rows = []
    for edit in ("copy", "jpeg75", "resize", "crop"):
        members = [k for k, (_, (_, e)) in enumerate(pair_list) if e == edit]
        hit = sum(1 for k in members if pair_list[k][0] in found)
        rows.append({"edit": edit, "planted": len(members), "found": hit,
                     "similarity (min–max)": f"{sims[members].min():.3f}–{sims[members].max():.3f}"})
    results.update({"train_images": len(files), "test_images": len(test_files) + len(planted),
                    "planted": len(planted), "found": len(found), "other_pairs_across": across_other,
                    "pairs_within_train": within, "command_seconds": seconds, "by_edit": rows})
    return rows


def train_accuracy(train: Path, test: Path, run: Path, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    for args in (("train", str(train), "--backbone", "mobilenet", "--weights", str(MOBILENET_NOTOP),
                  "--image-size", "96", "--seed", str(seed), "--out", str(run)),):
        done = subprocess.run(cli(*args), capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"transferkit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    done = subprocess.run(cli("evaluate", str(run), str(test), "--json"), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"transferkit evaluate failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout)["accuracy"]), time.perf_counter() - start


def training_part(tmp: Path, train: Path, test: Path, seed: int, results: dict) -> list[dict]:
    files = tk.scan_folder(train)
    labels = np.asarray(files.labels).astype(int)
    noisy, flips = flip(labels, len(files.class_names), 0.10, seed)
    data = link_folder(tmp / "train_noisy", files.paths, noisy, files.class_names)
    _, _, _ = review_command(data, tmp / "train_noisy_review", 96)
    index = {Path(p).name: i for i, p in enumerate(files.paths)}
    flagged = {index[Path(r["path"]).name] for r in read_rows(tmp / "train_noisy_review" / "label_issues.csv")}
    keep = np.array([i not in flagged for i in range(len(files))])
    cleaned = link_folder(tmp / "train_cleaned", files.paths, noisy, files.class_names, keep=keep)
    rows = []
    for name, folder, n in (("noisy (10 % flipped)", data, len(files)),
                            ("noisy, flagged images removed", cleaned, int(keep.sum())),
                            ("clean", train, len(files))):
        accuracy, seconds = train_accuracy(folder, test, tmp / f"run_{len(rows)}", seed)
        rows.append({"trained on": name, "images": n, "test accuracy": f"{accuracy:.3f}",
                     "train + evaluate": f"{seconds:.0f} s"})
        print(rows[-1], flush=True)
    removed_flips = len(set(int(i) for i in flips) & flagged)
    results.update({"flips": len(flips), "flagged": len(flagged), "flagged_flips": removed_flips, "rows": rows})
    return rows


def timing_part(tmp: Path, sizes: list[int], results: list[dict]) -> list[dict]:
    rows = []
    for n in sizes:
        data = write_fashion_subset(tmp / f"timing_{n}", n // 10, seed=0)
        # (no peak memory: Linux keeps ru_maxrss across exec, so a child of this process, which holds
        # TensorFlow and features, would report at least this process's own peak)
        seconds, _, stdout = review_command(data, tmp / f"timing_{n}_review", 96)
        summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        summary = summary.split("; open")[0]
        rows.append({"images": f"{n:,}", "wall time": f"{seconds:.0f} s", "images/s": f"{n / seconds:.0f}",
                     "summary": summary})
        results.append({"images": n, "seconds": seconds, "summary": summary})
        print(rows[-1], flush=True)
    return rows


PARTS = ("labels", "swap", "rules", "leaks", "duplicates", "training", "timing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS,
                        default=[p for p in PARTS if p not in ("swap", "rules", "leaks")])
    parser.add_argument("--per-class", type=int, default=100, help="Fashion-MNIST images a class (default 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="Fashion-MNIST subsets and flips")
    parser.add_argument("--stamps-seeds", type=int, nargs="*", default=[1, 2], help="flip draws on stamps5")
    parser.add_argument("--digits-seeds", type=int, nargs="*", default=[],
                        help="for `labels` and `rules`: flip draws on scikit-learn's digits (170 a class, 96 px)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--rankings", nargs="+", default=["self_confidence", "normalized_margin"],
                        choices=["self_confidence", "normalized_margin"], help="the command's rankings to run")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5], help="for `rules`")
    parser.add_argument("--flip-offset", type=int, default=0, help="for `rules`: added to the flips' seeds")
    parser.add_argument("--timing", type=int, nargs="+", default=[2000, 10000], help="images for the wall time")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if shared_missing():
        return 2
    payload: dict[str, object] = {"args": vars(args)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        tasks = {s: write_task(tmp / f"fashion_{s}", seed=s, per_class=args.per_class) for s in args.seeds}
        tables = []
        if "labels" in args.parts:
            rows: list[dict] = []
            results: list[dict] = []
            datasets = [(f"fashion{args.per_class}_{s}", tk.scan_folder(tasks[s][0]), 96, s) for s in args.seeds]
            stamps = tk.scan_folder(STAMPS5)
            datasets += [("stamps5", stamps, 224, s) for s in args.stamps_seeds]
            datasets += digits_datasets(tmp, args.digits_seeds)
            label_part(tmp, datasets, args.rates, args.rankings, rows, results)
            payload["labels"] = results
            tables.append(("Planted label errors: precision / recall (flagged), precision at k = flips", rows,
                           list(rows[0]) if rows else []))
        if "swap" in args.parts:
            datasets = [(f"fashion{args.per_class}_{s}", tk.scan_folder(tasks[s][0]), 96, s) for s in args.seeds]
            stamps = tk.scan_folder(STAMPS5)
            datasets += [("stamps5", stamps, 224, s) for s in args.stamps_seeds]
            rows = swap_part(datasets, args.rates)
            payload["swap"] = rows
            tables.append(("Probabilities × filter, in process on the same features: precision / recall (flagged)",
                           rows, list(rows[0])))
        if "rules" in args.parts:
            datasets = [(f"fashion{args.per_class}_{s}", tk.scan_folder(tasks[s][0]), 96, s) for s in args.seeds]
            stamps = tk.scan_folder(STAMPS5)
            datasets += [("stamps5", stamps, 224, s) for s in args.stamps_seeds]
            datasets += digits_datasets(tmp, args.digits_seeds)
            rows = rules_part(datasets, args.rates, args.shares, args.flip_offset)
            payload["rules"] = rows
            tables.append((f"Rules, in process, pooled over the draws (flip offset {args.flip_offset}): "
                           "precision / recall", rows, list(rows[0])))
        first = args.seeds[0]
        if "leaks" in args.parts:
            rows = leaks_part(tmp, tasks[first][0], tasks[first][1])
            payload["leaks"] = rows
            tables.append(("Planted copies across two sets, in process", rows, list(rows[0])))
        if "duplicates" in args.parts:
            results_d: dict = {}
            rows = duplicates_part(tmp, tasks[first][0], tasks[first][1], results_d)
            payload["duplicates"] = results_d
            tables.append((f"Planted near duplicates across train and test: {results_d['found']} of "
                           f"{results_d['planted']} found, {results_d['other_pairs_across']} other pairs across, "
                           f"{results_d['pairs_within_train']} within train ({results_d['command_seconds']:.0f} s)",
                           rows, list(rows[0])))
        if "training" in args.parts:
            results_t: dict = {}
            rows = training_part(tmp, tasks[first][0], tasks[first][1], first, results_t)
            payload["training"] = results_t
            title = (f"Retraining (fashion{args.per_class}_{first}, seed {first}): {results_t['flagged']} flagged, "
                     f"{results_t['flagged_flips']} of {results_t['flips']} flips among them")
            tables.append((title, rows, list(rows[0])))
        if "timing" in args.parts:
            results_w: list[dict] = []
            rows = timing_part(tmp, args.timing, results_w)
            payload["timing"] = results_w
            tables.append(("Wall time of `transferkit review` (96 px)", rows, list(rows[0])))
    payload["seconds"] = time.perf_counter() - started
    for title, rows, columns in tables:
        print(f"\n{title}\n")
        print(markdown_table(rows, columns))
    print(f"\ntotal {payload['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
