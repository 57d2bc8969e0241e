"""``review.html``: one self-contained page on which a person decides, item by item, what to do with
the suspected label errors, duplicate pairs and outliers of a dataset, then downloads
``decisions.csv`` (``path,decision,label``) for :func:`transferkit._review.plan_decisions`.

The page needs nothing beside itself: thumbnails are ``data:`` URIs, style and script are inline,
and a Content-Security-Policy forbids every request. Items are shown fifty to a page of each
section, so a review of a few thousand items stays quick; only the thumbnails of the shown items
are decoded. Decisions are kept in the browser's storage for that page, so reloading it loses none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transferkit._atomic import write_text_atomic
from transferkit._errors import ConfigError
from transferkit._html import THUMBNAIL_SIZE, data_uri, escape, page, thumbnail_png
from transferkit._types import PathLike

__all__ = ["default_thumbnail", "write_review_page"]

log = logging.getLogger("transferkit")

DECISIONS_FILE = "decisions.csv"
DECISIONS_HEADER = ("path", "decision", "label")
PAGE_SIZE = 50  # items per page of a section


def default_thumbnail(path: PathLike, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG bytes of ``path`` at ``size × size`` pixels (padded to a square, EXIF upright), read with
    :func:`transferkit.data.load_image`. Raises ``DataError`` for a file that cannot be read."""
    return thumbnail_png(path, size=size)


def _rows(name: str, rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> list[Mapping[str, Any]]:
    for n, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ConfigError(f"{name}[{n}] has no {', '.join(map(repr, missing))}; each row needs the keys "
                              f"{', '.join(keys)}. Received: {dict(row)!r}.")
    return list(rows)


def _score(value: Any) -> float | None:
    """A score for the page: a finite number, else ``None`` (shown as a blank)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def write_review_page(
    path: PathLike,
    *,
    title: str,
    class_names: Sequence[str],
    class_counts: Mapping[str, int],
    label_issues: Sequence[Mapping[str, Any]],
    duplicates: Sequence[Mapping[str, Any]],
    outliers: Sequence[Mapping[str, Any]],
    thumbnail: Callable[[str], bytes] = default_thumbnail,
) -> Path:
    """Write the review page to ``path`` (an HTML file); returns the path.

    Args:
        path: The file to write (``review.html``).
        title: The page's heading.
        class_names: The classes a relabel may choose from, in the order shown.
        class_counts: Images of each class, for the summary and the class table.
        label_issues: Rows ``{"path", "given", "suggested", "score"}``, most suspect first; the
            relabel choice starts at ``suggested``.
        duplicates: Rows ``{"path_a", "path_b", "similarity", "across"}``, shown side by side
            (``path_a`` left); ``across`` true marks a pair between the data (``path_a``) and another
            folder (``path_b``, a test set): a leak, listed first and marked. ``decisions.csv`` is
            applied to the data, so a leak's choice is keep or remove ``path_a``; ``path_b`` gets a
            row only from another section that lists it.
        outliers: Rows ``{"path", "reason", "score"}`` (``score`` may be blank).
        thumbnail: ``path → image bytes`` (PNG, or JPEG/GIF/WebP, small: about 96 pixels); each
            path is asked once. A path it raises for is shown as "no preview".

    The downloaded ``decisions.csv`` has the header ``path,decision,label`` and one row per decided
    path (``decision`` is ``keep``, ``relabel`` or ``remove``; ``label`` only for ``relabel``),
    paths exactly as given here, quoted as RFC 4180 says; undecided paths are left out. A path met
    in several sections has one decision, shown wherever it appears.
    """
    issues = _rows("label_issues", label_issues, ("path", "given", "suggested", "score"))
    pairs = _rows("duplicates", duplicates, ("path_a", "path_b", "similarity", "across"))
    odd = _rows("outliers", outliers, ("path", "reason", "score"))
    pairs = sorted(pairs, key=lambda row: not row["across"])  # leaks first, otherwise in the order given

    paths: list[str] = []
    index: dict[str, int] = {}

    def ref(p: Any) -> int:
        p = str(p)
        if p not in index:
            index[p] = len(paths)
            paths.append(p)
        return index[p]

    data = {
        "classes": [str(c) for c in class_names],
        "counts": [[str(c), int(n)] for c, n in class_counts.items()],
        "issues": [[ref(r["path"]), str(r["given"]), str(r["suggested"]), _score(r["score"])] for r in issues],
        "pairs": [[ref(r["path_a"]), ref(r["path_b"]), _score(r["similarity"]), bool(r["across"])] for r in pairs],
        "outliers": [[ref(r["path"]), str(r["reason"]), _score(r["score"])] for r in odd],
        "pageSize": PAGE_SIZE,
    }
    thumbs: list[str | None] = []
    for p in paths:
        try:
            thumbs.append(data_uri(thumbnail(p)))
        except Exception as error:  # one unreadable image must not cost the page
            log.debug("No thumbnail for %s: %s", p, error)
            thumbs.append(None)
    data["paths"] = paths
    data["thumbs"] = thumbs
    fingerprint = hashlib.sha1(json.dumps([title, data["issues"], data["pairs"], data["outliers"], paths],
                                          sort_keys=True).encode()).hexdigest()[:16]
    data["storageKey"] = f"transferkit-review-{fingerprint}"

    leaks = sum(1 for r in pairs if r["across"])
    total = sum(int(n) for n in class_counts.values())
    body = f"""
<header class="top">
  <h1>{escape(title)}</h1>
  <nav><a href="#summary">Summary</a><a href="#label-issues">Label errors</a><a href="#duplicates">Duplicates</a>
  <a href="#outliers">Outliers</a><a href="#classes">Classes</a></nav>
  <span id="decided" class="muted">0 decided</span>
  <button id="download" class="primary" type="button">Download {DECISIONS_FILE}</button>
</header>
<main>
<section id="summary"><h2>Summary</h2>
  <div class="figures">
    <div class="figure"><b>{total}</b>images in {len(class_counts)} classes</div>
    <div class="figure"><b>{len(issues)}</b>suspected label errors</div>
    <div class="figure{' leak' if leaks else ''}"><b>{len(pairs)}</b>duplicate pairs{
        f'<br><span class="badge leak">{leaks} leak{"s" if leaks != 1 else ""}</span>' if leaks else ''}</div>
    <div class="figure"><b>{len(odd)}</b>outliers</div>
  </div>
  <p class="muted">Decide keep, relabel or remove for each item, then download <code>{DECISIONS_FILE}</code>
  (<code>path,decision,label</code>; undecided items are left out) and apply it with
  <code>transferkit review DATA --apply {DECISIONS_FILE}</code> or <code>plan_decisions</code>/<code>apply_plan</code>.
  A path listed in several sections has one decision. Decisions are kept by this browser for this page.</p>
</section>
<section id="label-issues"><h2>Suspected label errors <span class="muted">({len(issues)})</span></h2>
  <p class="muted">Images whose given label the model disagrees with, most suspect first; the relabel choice
  starts at the suggested class.</p><div class="list"></div></section>
<section id="duplicates"><h2>Duplicate pairs <span class="muted">({len(pairs)}{
        f', {leaks} across folders' if leaks else ''})</span></h2>
  <p class="muted">Pairs of nearly identical images. <span class="badge leak">LEAK</span> marks a pair between the
  data and another folder (such as the test set): the test figures are optimistic until one side goes. Leaks are
  listed first.</p><div class="list"></div></section>
<section id="outliers"><h2>Outliers <span class="muted">({len(odd)})</span></h2>
  <p class="muted">Images unlike every class, and images too small, blank or nearly uniform.</p>
  <div class="list"></div></section>
<section id="classes"><h2>Images per class</h2><table><thead><tr><th class="name">class</th><th>images</th>
  <th>share</th><th class="name"></th></tr></thead><tbody></tbody></table></section>
</main>"""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, page(title, body, script=_SCRIPT, data=data, css=_CSS))


_CSS = """
.figure.leak { border-color: var(--bad); }
.item { display: flex; gap: 14px; align-items: flex-start; border-top: 1px solid var(--line); padding: 10px 0; }
.item.decided { background: #f3f8f3; }
.item .info { flex: 1; min-width: 0; }
.item .side { display: flex; flex-direction: column; gap: 4px; width: 260px; }
.pair-images { display: flex; gap: 12px; }
.decision { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin-top: 6px; }
.decision label { white-space: nowrap; }
.decision .state { font-size: 12px; color: var(--good); font-weight: 600; }
.item.removed .thumb, .side.removed .thumb { opacity: 0.35; }
.labels span { margin-right: 12px; }
"""

_SCRIPT = r"""
const decisions = new Map();          // path index -> {decision, label}
let visible = [];                     // refresh functions of the controls shown
let stored = null;
try { stored = window.localStorage; } catch (e) { stored = null; }

function load() {
  if (!stored) return;
  try {
    const saved = JSON.parse(stored.getItem(D.storageKey) || "{}");
    D.paths.forEach((p, i) => { if (saved[p]) decisions.set(i, saved[p]); });
  } catch (e) { /* a damaged entry: start afresh */ }
}
function save() {
  if (!stored) return;
  const out = {};
  decisions.forEach((v, i) => { out[D.paths[i]] = v; });
  try { stored.setItem(D.storageKey, JSON.stringify(out)); } catch (e) { /* full or refused */ }
}
function changed() {
  save();
  visible.forEach(f => f());
  document.getElementById("decided").textContent = decisions.size + " of " + D.paths.length + " decided";
}
function thumb(i) {
  const uri = D.thumbs[i];
  if (!uri) return el("div", {class: "missing thumb", style: "width:96px;height:96px", text: "no preview"});
  return el("img", {class: "thumb", src: uri, alt: D.paths[i], title: D.paths[i], width: 96, height: 96});
}
function fmt(x, digits) { return x === null || x === undefined ? "" : Number(x).toFixed(digits); }
let uid = 0;

// keep / relabel to <class> / remove for one path
function singleControl(p, suggested) {
  const name = "d" + (uid++);
  const box = el("div", {class: "decision"});
  const radio = v => el("input", {type: "radio", name: name, value: v});
  const keep = radio("keep"), relabel = radio("relabel"), remove = radio("remove");
  const select = el("select", {"aria-label": "class"});
  if (suggested === null) select.append(el("option", {value: "", text: "choose a class"}));
  const names = D.classes.slice();
  if (suggested !== null && !names.includes(suggested)) names.push(suggested);
  names.forEach(c => select.append(el("option", {value: c, text: c})));
  select.value = suggested === null ? "" : suggested;
  const clear = el("button", {type: "button", class: "clear", text: "clear"});
  const state = el("span", {class: "state"});
  box.append(el("label", {}, keep, " keep"), el("label", {}, relabel, " relabel to "), select,
             el("label", {}, remove, " remove"), clear, state);
  keep.addEventListener("change", () => { decisions.set(p, {decision: "keep", label: ""}); changed(); });
  remove.addEventListener("change", () => { decisions.set(p, {decision: "remove", label: ""}); changed(); });
  const setLabel = () => {
    if (select.value) decisions.set(p, {decision: "relabel", label: select.value});
    else decisions.delete(p);
    changed();
  };
  relabel.addEventListener("change", setLabel);
  select.addEventListener("change", () => { if (select.value) { relabel.checked = true; setLabel(); } });
  clear.addEventListener("click", () => { decisions.delete(p); changed(); });
  const refresh = () => {
    const d = decisions.get(p);
    keep.checked = !!d && d.decision === "keep";
    remove.checked = !!d && d.decision === "remove";
    relabel.checked = !!d && d.decision === "relabel";
    if (d && d.decision === "relabel") select.value = d.label;
    state.textContent = d ? (d.decision === "relabel" ? "relabel → " + d.label : d.decision) : "";
    const item = box.closest(".item");
    if (item) {
      item.classList.toggle("decided", !!d);
      item.classList.toggle("removed", !!d && d.decision === "remove");
    }
  };
  return [box, refresh];
}

// keep both / remove left / remove right for a pair; a relabel made elsewhere counts as kept.
// A leak's right side lies in the other folder: decisions.csv is applied to the data, so only the
// data's side (left) is decided there.
function pairControl(a, b, sides, across) {
  const name = "d" + (uid++);
  const box = el("div", {class: "decision"});
  const radio = v => el("input", {type: "radio", name: name, value: v});
  const both = radio("keep"), left = radio("remove-a"), right = radio("remove-b");
  const clear = el("button", {type: "button", class: "clear", text: "clear"});
  const state = el("span", {class: "state"});
  if (across) {
    box.append(el("label", {}, both, " keep"), el("label", {}, left, " remove left (from the data)"), clear, state,
               el("span", {class: "muted", text: "the other folder's copy is not changed by decisions.csv"}));
  } else {
    box.append(el("label", {}, both, " keep both"), el("label", {}, left, " remove left"),
               el("label", {}, right, " remove right"), clear, state);
  }
  const KEEP = {decision: "keep", label: ""};
  const kept = i => { const d = decisions.get(i); if (!d || d.decision === "remove") decisions.set(i, KEEP); };
  const keepOne = i => { const d = decisions.get(i); if (!d || d.decision !== "relabel") decisions.set(i, KEEP); };
  both.addEventListener("change", () => { keepOne(a); if (!across) keepOne(b); changed(); });
  left.addEventListener("change", () => {
    decisions.set(a, {decision: "remove", label: ""});
    if (!across) kept(b);
    changed();
  });
  right.addEventListener("change", () => { decisions.set(b, {decision: "remove", label: ""}); kept(a); changed(); });
  clear.addEventListener("click", () => { decisions.delete(a); if (!across) decisions.delete(b); changed(); });
  const refresh = () => {
    const da = decisions.get(a), db = across ? undefined : decisions.get(b);
    const goneA = !!da && da.decision === "remove", goneB = !!db && db.decision === "remove";
    left.checked = goneA && !goneB;
    right.checked = goneB && !goneA;
    both.checked = !!da && !goneA && (across || (!!db && !goneB));
    state.textContent = goneA && goneB ? "both removed" : left.checked ? "remove left" : right.checked
      ? "remove right" : both.checked ? (across ? "keep" : "keep both") : "";
    sides[0].classList.toggle("removed", goneA);
    sides[1].classList.toggle("removed", goneB);
    const item = box.closest(".item");
    if (item) item.classList.toggle("decided", !!da || !!db);
  };
  return [box, refresh];
}

function issueItem(row, n) {
  const [p, given, suggested, score] = row;
  const [control, refresh] = singleControl(p, suggested);
  const item = el("div", {class: "item", "data-key": "issue-" + n},
    thumb(p),
    el("div", {class: "info"}, el("div", {class: "path", text: D.paths[p]}),
       el("div", {class: "labels"}, el("span", {}, "given ", el("b", {text: given})),
          el("span", {}, "suggested ", el("b", {text: suggested})),
          el("span", {class: "muted", text: "score " + fmt(score, 3)})),
       control));
  return [item, refresh];
}
function pairItem(row, n) {
  const [a, b, similarity, across] = row;
  const side = (i, tag) => el("div", {class: "side"}, thumb(i), el("div", {class: "muted", text: tag}),
                              el("div", {class: "path", text: D.paths[i]}));
  const sides = across ? [side(a, "left · in the data"), side(b, "right · in the other folder")]
                       : [side(a, "left"), side(b, "right")];
  const [control, refresh] = pairControl(a, b, sides, across);
  const item = el("div", {class: "item" + (across ? " leak" : ""), "data-key": "pair-" + n},
    el("div", {class: "info"},
       el("div", {}, across ? el("span", {class: "badge leak", text: "LEAK: across folders"})
                            : el("span", {class: "badge within", text: "within the data"}),
          el("span", {class: "muted", text: "  similarity " + fmt(similarity, 4)})),
       el("div", {class: "pair-images"}, ...sides), control));
  return [item, refresh];
}
function outlierItem(row, n) {
  const [p, reason, score] = row;
  const [control, refresh] = singleControl(p, null);
  const item = el("div", {class: "item", "data-key": "outlier-" + n},
    thumb(p),
    el("div", {class: "info"}, el("div", {class: "path", text: D.paths[p]}),
       el("div", {class: "labels"}, el("span", {text: reason}),
          el("span", {class: "muted", text: score === null ? "" : "score " + fmt(score, 3)})),
       control));
  return [item, refresh];
}

const shown = {};  // section id -> refresh functions of its page
function paged(sectionId, rows, make) {
  const list = document.querySelector("#" + sectionId + " .list");
  let start = 0;
  const pager = el("div", {class: "pager"});
  const prev = el("button", {type: "button", class: "prev", text: "‹ previous"});
  const next = el("button", {type: "button", class: "next", text: "next ›"});
  const where = el("span", {class: "muted where"});
  pager.append(prev, where, next);
  const items = el("div", {class: "items"});
  list.append(items);
  if (rows.length > D.pageSize) list.append(pager);
  const render = () => {
    items.replaceChildren();
    if (!rows.length) items.append(el("p", {class: "muted", text: "None found."}));
    shown[sectionId] = [];
    rows.slice(start, start + D.pageSize).forEach((row, k) => {
      const [node, refresh] = make(row, start + k);
      items.append(node);
      shown[sectionId].push(refresh);
    });
    visible = Object.values(shown).flat();
    where.textContent = (start + 1) + "–" + Math.min(start + D.pageSize, rows.length) + " of " + rows.length;
    prev.disabled = start === 0;
    next.disabled = start + D.pageSize >= rows.length;
    changed();
  };
  prev.addEventListener("click", () => { start = Math.max(0, start - D.pageSize); render(); });
  next.addEventListener("click", () => { start += D.pageSize; render(); });
  render();
}

function csvField(text) {
  text = String(text);
  return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}
function decisionsCsv() {
  const lines = ["path,decision,label"];
  D.paths.forEach((p, i) => {
    const d = decisions.get(i);
    if (d) lines.push([p, d.decision, d.decision === "relabel" ? d.label : ""].map(csvField).join(","));
  });
  return lines.join("\r\n") + "\r\n";
}
function download() {
  const blob = new Blob([decisionsCsv()], {type: "text/csv;charset=utf-8"});
  const url = URL.createObjectURL(blob);
  const a = el("a", {href: url, download: "decisions.csv"});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function classTable() {
  const body = document.querySelector("#classes tbody");
  const total = D.counts.reduce((s, [, n]) => s + n, 0) || 1;
  const top = Math.max(1, ...D.counts.map(([, n]) => n));
  D.counts.forEach(([name, n]) => {
    body.append(el("tr", {}, el("td", {class: "name", text: name}), el("td", {text: String(n)}),
      el("td", {text: (100 * n / total).toFixed(1) + " %"}),
      el("td", {class: "name"}, el("span", {class: "bar", style: "width:" + Math.round(200 * n / top) + "px"}))));
  });
}

load();
paged("label-issues", D.issues, issueItem);
paged("duplicates", D.pairs, pairItem);
paged("outliers", D.outliers, outlierItem);
classTable();
document.getElementById("download").addEventListener("click", download);
window.reviewDecisionsCsv = decisionsCsv;  // for scripts and tests
"""
