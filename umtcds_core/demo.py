"""``umtcds demo [--workspace DIR] [--fast]`` — the whole journey on the bundled demo campus site, offline, on a CPU.

What it does, step by step (each step calls the same core function as ``umtcds <step>`` and the dashboard page):

1. **serve** ``data/demo_site/`` ("Qingshan University / 青山大学") on 127.0.0.1 (:mod:`umtcds_core.demo_site`);
2. **crawl** it into ``<workspace>/pages/`` (robots.txt obeyed: the staff-only area is never fetched; one page is GBK);
3. **generate** Q&A pairs with the embedded model ``smollm2-135m`` (local backend) into ``qa/qa.jsonl``;
4. **dataset**: merge the generated pairs with the hand-written ``data/demo_site/qa_seed.jsonl`` (each pair flagged
   ``"demo_origin": "generated" | "seed"`` in ``dataset/qa_edited.jsonl``) and split 8:1:1 into ``dataset/``.
   Why the seed: a 135M-parameter model writes few usable pairs, and the demo must end with something learned;
   the output says how many pairs came from each source;
5. **config**: a LoRA config for the small model, sized for a few minutes on 2 CPU cores (``config.yaml``);
6. **train** into ``runs/demo-…/`` (checkpoints, ``metrics.jsonl``, final adapter);
7. **evaluate** base vs tuned, each closed book and with retrieval over ``index/`` (built right after the crawl), on
   the test split, and print the four-system table (``runs/…/eval/``);
8. **chat**: one answer from the tuned model, and a question whose answer the tuned model learned and the base model
   did not — found by comparing their answers (not chosen in advance).

Every step prints its result, where its files are, and its time; the times are also saved to
``<workspace>/demo_report.json``. A step whose module is missing prints "step X not available yet" and the steps that
need its output are skipped. ``--fast`` (used by the tests) crawls a few pages and trains a few steps; it proves the
plumbing, not the learning.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import runs, steps
from .demo_site import QA_SEED_FILE, DemoSite
from .errors import UserError
from .fileio import read_jsonl, write_json_atomic, write_jsonl_atomic
from .workspace import Workspace, WorkspaceError, workspaces_root

DEMO_NAME = "qingshan-demo"
SEED_TAG, GENERATED_TAG = "seed", "generated"
# The wizard's steps from the registry, with chat moved last: the demo's chat step looks for a learned fact in the
# evaluate step's answers first.
STEPS = tuple(sorted((s.name for s in steps.PAGE_STEPS), key=lambda name: name == "chat"))
NEEDS = {
    "generate": "crawl",
    "dataset": "crawl",
    "config": "dataset",
    "train": "config",
    "evaluate": "train",
    "chat": "train",
}
"""The step whose output each step needs (generate failing still leaves the seed pairs for the dataset)."""
MODULES = {name: steps.get(name).module for name in STEPS}


@dataclass
class DemoSettings:
    """How big each step is. The defaults aim at < 15 minutes on a 2-core CPU; ``fast()`` is for tests.

    Why so small: on a CPU the 135M model trains at a few dozen tokens per second, so the demo teaches a handful of
    facts many times over rather than the whole site once. ``umtcds generate``/``train`` on the same workspace do
    the full-size job.
    """

    depth: int = 2
    """Crawl depth: 2 reaches the Chinese pages (one of them GBK-encoded)."""
    max_pages: int = 40
    gen_pages: int = 4
    """Generate Q&A from this many crawled pages (those with the most figures in them)."""
    pairs_per_page: int = 3
    gen_max_tokens: int = 256
    """Reply cap per page when generating (3 short pairs fit)."""
    seed_pairs: int | None = None
    """Hand-written seed pairs added to the generated ones (None = all; else picked round-robin over the pages)."""
    max_steps: int = 80
    batch_size: int = 8
    learning_rate: float = 3e-3
    """High for LoRA, on purpose: few steps must be enough to memorise short facts."""
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """All linear layers of the llama architecture: more room to store facts at little extra compute."""
    max_input_length: int = 128
    max_output_length: int = 64
    eval_limit: int | None = None
    """Evaluate at most this many test pairs (None = the whole test split)."""
    probe_new_tokens: int = 32
    """Longest answer (tokens) when evaluating and probing; the seed answers are short."""
    model: str = "smollm2-135m"

    @classmethod
    def fast(cls) -> DemoSettings:
        return cls(
            depth=1,
            max_pages=3,
            gen_pages=2,
            pairs_per_page=2,
            gen_max_tokens=128,
            seed_pairs=8,
            max_steps=4,
            batch_size=4,
            eval_limit=2,
            probe_new_tokens=12,
        )


@dataclass
class StepReport:
    step: str
    status: str = "done"
    """done | failed | not available | skipped"""
    seconds: float = 0.0
    summary: str = ""
    files: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


class StepUnavailable(Exception):
    """The module of a step is missing or does not offer what the demo calls."""


def _module(step: str):
    name = MODULES[step]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise StepUnavailable(f"{name} does not exist") from exc
        raise


def _need(module, *names: str):
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise StepUnavailable(f"{module.__name__} has no {', '.join(missing)}")
    return [getattr(module, n) for n in names]


# ---- workspace --------------------------------------------------------------------------------------------------
def prepare_workspace(path: str | Path | None = None) -> Workspace:
    """The demo's workspace: ``path``, or ``<workspaces root>/qingshan-demo``. Refuses a folder holding someone's project.

    A folder that a previous demo made (``workspace.json`` has ``"demo": true``) is reused: its step outputs are
    cleared so the run starts clean; old runs stay in ``runs/``.
    """
    root = Path(path).expanduser().resolve() if path else workspaces_root() / DEMO_NAME
    if root.exists() and any(root.iterdir()):
        meta = Workspace(root).meta()
        if not meta.get("demo"):
            raise WorkspaceError(
                f"{root} already holds files that the demo did not make; pass an empty or new folder to --workspace.",
                zh=f"{root} 里已经有不是演示生成的文件；请给 --workspace 指定一个空的或新的文件夹。",
            )
    ws = Workspace.create(root.name, root=root.parent)
    ws.update_meta(demo=True)
    for sub in ("pages", "qa", "dataset", "config.yaml", "demo_report.json"):
        if (ws.root / sub).exists():
            ws.remove(sub)
    return ws


# ---- the demo ---------------------------------------------------------------------------------------------------
class Demo:
    """Runs the steps in order; each step's report is printed as it finishes."""

    def __init__(self, ws: Workspace, settings: DemoSettings, out: Callable[[str], None] = print):
        self.ws = ws
        self.s = settings
        self.out = out
        self.reports: dict[str, StepReport] = {}
        self.site: DemoSite | None = None
        self.run_dir: Path | None = None
        self.learned: dict | None = None
        self.config_obj = None
        self._cm = None

    # -- plumbing
    def _rel(self, p: Path | str) -> str:
        p = Path(p)
        try:
            return str(p.relative_to(self.ws.root))
        except ValueError:
            return str(p)

    def _do(self, step: str, fn: Callable[[], StepReport]) -> StepReport:
        n = STEPS.index(step) + 1
        need = NEEDS.get(step)
        self.out(f"\n[{n}/{len(STEPS)}] {step} …")
        t0 = time.perf_counter()
        if need and self.reports.get(need) and self.reports[need].status != "done":
            rep = StepReport(step, "skipped", summary=f"skipped: it needs the output of '{need}'")
        else:
            try:
                rep = fn()
            except StepUnavailable as exc:
                rep = StepReport(step, "not available", summary=f"step {step} not available yet ({exc})")
            except UserError as exc:
                rep = StepReport(step, "failed", summary=f"failed: {exc}")
            except Exception as exc:  # noqa: BLE001 - one broken step must not hide the others' results
                rep = StepReport(step, "failed", summary=f"failed with {type(exc).__name__}: {exc}")
        rep.seconds = round(time.perf_counter() - t0, 1)
        self.reports[step] = rep
        mark = {"done": "✓", "failed": "✗", "not available": "–", "skipped": "–"}.get(rep.status, "?")
        self.out(f"    {mark} {rep.summary}")
        for f in rep.files:
            self.out(f"      → {f}")
        self.out(f"    ({rep.seconds:.1f} s)")
        return rep

    def run(self) -> dict:
        t0 = time.perf_counter()
        machine_at_start = _machine()
        self.out(f"UMTCDS demo — workspace {self.ws.root}")
        with DemoSite() as site:
            self.site = site
            self.ws.update_meta(start_url=site.url)
            self.out(f"Serving the demo campus site (Qingshan University / 青山大学) at {site.url}")
            self._do("crawl", self.crawl)
            self._do("generate", self.generate)
        self._do("dataset", self.dataset)
        self._do("config", self.config)
        self._do("train", self.train)
        self._do("evaluate", self.evaluate)
        self._do("chat", self.chat)
        total = round(time.perf_counter() - t0, 1)
        report = {
            "workspace": str(self.ws.root),
            "settings": asdict(self.s),
            "steps": [asdict(r) for r in self.reports.values()],
            "total_seconds": total,
            "learned": self.learned,
            "machine": machine_at_start,
            "load_avg_1m_end": _machine().get("load_avg_1m"),
        }
        write_json_atomic(self.ws.root / "demo_report.json", report)
        self._summary(total)
        return report

    def _summary(self, total: float) -> None:
        self.out("\nTime per step:")
        for r in self.reports.values():
            self.out(f"  {r.step:<9} {r.seconds:>7.1f} s  {r.status}")
        self.out(f"  {'total':<9} {total:>7.1f} s")
        if self.learned:
            L = self.learned
            self.out(f"\nLearned by tuning ({L['split']} split, from {L['origin']} pairs):")
            self.out(f"  Q:     {L['question']}")
            self.out(f"  base:  {L['base']}")
            self.out(f"  tuned: {L['tuned']}")
            self.out(f"  (expected: {L['reference']})")
        self.out(f"\nEverything is in {self.ws.root} (report: demo_report.json). Open it in the dashboard: make run")

    # -- steps
    def crawl(self) -> StepReport:
        crawl_mod = _module("crawl")
        CrawlConfig, crawl = _need(crawl_mod, "CrawlConfig", "crawl")
        assert self.site is not None
        cfg = CrawlConfig(
            start_url=self.site.url,
            out_dir=self.ws.pages_dir,
            depth=self.s.depth,
            max_pages=self.s.max_pages,
            concurrency=4,
            delay=0.0,
        )
        summary = crawl(cfg)
        blocked = [p for p in self.site.requests if p.startswith("/staff-only")]
        text = (
            f"saved {summary.saved} pages ({summary.robots} blocked by robots.txt, {summary.duplicates} duplicates, "
            f"{summary.errors} errors); the staff-only area was {'REQUESTED' if blocked else 'never requested'}"
        )
        files = [self._rel(self.ws.pages_dir) + "/*.txt", self._rel(self.ws.pages_dir / "manifest.jsonl")]
        text += "; " + self._index(files)
        return StepReport("crawl", summary=text, files=files, data={"saved": summary.saved, "errors": summary.errors})

    def _index(self, files: list[str]) -> str:
        """Index the crawled pages (``umtcds index``) so evaluate can score the +retrieval systems; a failure is said
        and only costs those two systems."""
        from .index import build_index, index_dir_of

        try:
            report = build_index(self.ws.pages_dir, index_dir_of(self.ws))
        except UserError as exc:
            return f"not indexed ({exc})"
        files.append(self._rel(index_dir_of(self.ws)))
        return f"indexed {report.pages} pages into {report.chunks} chunks"

    def generate(self) -> StepReport:
        qa = _module("generate")
        GenSettings, generate = _need(qa, "GenSettings", "generate")
        (make_backend,) = _need(_module_named("umtcds_core.llm"), "make_backend")
        settings = GenSettings(
            backend="local",
            model=self.s.model,
            pairs_per_page=self.s.pairs_per_page,
            max_tokens=self.s.gen_max_tokens,
            max_parse_retries=1,
        )
        pages = sorted(self.ws.pages_dir.glob("*.txt"))
        chosen = sorted(pages, key=lambda p: -len(re.findall(r"\d+", p.read_text(encoding="utf-8"))))
        chosen = chosen[: self.s.gen_pages]
        backend = make_backend("local", self.s.model, batch_size=8)
        try:
            with tempfile.TemporaryDirectory(prefix="umtcds-demo-") as tmp:
                for p in chosen + [self.ws.pages_dir / "manifest.jsonl"]:
                    if p.exists():
                        shutil.copy2(p, tmp)
                summary = generate(tmp, self.ws.qa_dir, backend, settings)
        finally:
            backend.close()
        text = (
            f"{summary.pairs} pair(s) from {summary.processed - summary.failures} of the {len(chosen)} pages richest in "
            f"facts (of {len(pages)} crawled) with the embedded model {self.s.model}; {summary.failures} pages gave no "
            f"usable pair (reasons in failures.jsonl); {summary.tokens_out} tokens at {summary.tokens_per_s:.1f} "
            "tokens/s. (`umtcds generate pages --out qa` does every page.)"
        )
        return StepReport(
            "generate",
            summary=text,
            files=[self._rel(self.ws.qa_file), self._rel(self.ws.qa_dir / "failures.jsonl")],
            data={"pairs": summary.pairs, "failures": summary.failures, "pages": summary.pages},
        )

    def dataset(self) -> StepReport:
        ds = _module("dataset")
        Pair, build_dataset, describe = _need(ds, "Pair", "build_dataset", "describe")
        pairs = []
        generated = []
        if self.ws.qa_file.exists():
            generated = [r for r in read_jsonl(self.ws.qa_file) if r.get("question") and r.get("answer")]
        for r in generated:
            extra = {k: v for k, v in r.items() if k not in {"question", "answer", "source"}}
            pairs.append(
                Pair(r["question"], r["answer"], r.get("source", ""), extra={**extra, "demo_origin": GENERATED_TAG})
            )
        base = self.site.url if self.site else ""
        seed = pick_seed(self.s.seed_pairs)
        for r in seed:
            pairs.append(Pair(r["question"], r["answer"], base + r["source"], extra={"demo_origin": SEED_TAG}))
        merged = self.ws.dataset_dir / "qa_edited.jsonl"
        write_jsonl_atomic(merged, [p.to_qa_record() for p in pairs])
        report = build_dataset(merged, self.ws.dataset_dir, split="8:1:1", seed=42, fmt="glm4")
        c = report["counts"]
        return StepReport(
            "dataset",
            summary=f"{len(generated)} generated + {len(seed)} hand-written seed pairs (data/demo_site/qa_seed.jsonl, "
            "flagged demo_origin=seed: the tiny model's own pairs are too few and too rough to learn from alone) → "
            f"{report['pairs']} pairs → "
            f"train {c['train']} / dev {c['dev']} / test {c['test']}",
            files=[self._rel(merged)] + [self._rel(f) for f in report["files"].values()],
            data={"generated": len(generated), "seed": len(seed), "counts": c, "describe": describe(report)},
        )

    def config(self) -> StepReport:
        cfg_mod = _module("config")
        preset_for, save_config, preset_name = _need(cfg_mod, "preset_for", "save_config", "preset_name")
        self.run_dir = self.ws.new_run_dir("demo")
        steps = self.s.max_steps
        cfg = preset_for(
            "lora",
            self.s.model,
            data_dir="dataset",
            output_dir=str(self.run_dir.relative_to(self.ws.root)),
            max_steps=steps,
            per_device_batch_size=self.s.batch_size,
            learning_rate=self.s.learning_rate,
            lora_r=self.s.lora_r,
            lora_alpha=2 * self.s.lora_r,
            lora_dropout=0.0,
            max_input_length=self.s.max_input_length,
            max_output_length=self.s.max_output_length,
            eval_steps=max(5, steps // 2),
            save_steps=steps,
            save_total_limit=1,
            logging_steps=max(1, min(5, steps // 3)),
            lora_target_modules=list(self.s.lora_targets),
            gradient_checkpointing=False,
        )
        self.config_obj = cfg
        save_config(cfg, self.ws.config_file)
        return StepReport(
            "config",
            summary=f"LoRA r={cfg.lora_r} on {cfg.model} (preset {preset_name('lora', self.s.model)}, adjusted for a "
            f"CPU demo): {steps} steps × batch {cfg.per_device_batch_size}, lr {cfg.learning_rate:g}, "
            f"lengths {cfg.max_input_length}/{cfg.max_output_length}",
            files=[self._rel(self.ws.config_file)],
        )

    def train(self) -> StepReport:
        (train,) = _need(_module("train"), "train")
        assert self.run_dir is not None
        info = train(self.config_obj, config_file=self.ws.config_file, resume="no", output_dir=str(self.run_dir))
        fm = info.get("final_metrics", {})
        losses = [m["loss"] for m in runs.read_metrics(self.run_dir) if "loss" in m]
        curve = f"train loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else "no loss logged"
        ev = f", dev loss {fm['eval_loss']:.3f}" if fm.get("eval_loss") is not None else ""
        return StepReport(
            "train",
            summary=f"{fm.get('global_step', '?')} steps; {curve}{ev}",
            files=[self._rel(self.run_dir), self._rel(runs.metrics_path(self.run_dir))],
            data={"final_metrics": fm},
        )

    def _chat_model(self):
        if self._cm is None:
            (load_chat_model,) = _need(_module("chat"), "load_chat_model")
            self._cm = load_chat_model(self.s.model, adapter=self.run_dir)
        return self._cm

    def evaluate(self) -> StepReport:
        evaluate, format_report = _need(_module("evaluate"), "evaluate", "format_report")
        assert self.run_dir is not None
        out = runs.eval_metrics_path(self.run_dir)
        from .index import has_index, index_dir_of

        index = index_dir_of(self.ws)
        metrics = evaluate(
            self.s.model,
            self.ws.dataset_dir / "test.jsonl",
            adapter=str(self.run_dir),
            out=out,
            max_new_tokens=self.s.probe_new_tokens,
            limit=self.s.eval_limit,
            chat_model=self._chat_model(),
            rag=index if has_index(index) else None,
        )
        m = metrics["metrics"]
        base, tuned = m.get("base", {}), m.get("tuned", {})
        text = (
            f"{metrics['n']} held-out test question(s); key facts found in the answers: base {_pct(base.get('key-fact'))}"
            f", tuned {_pct(tuned.get('key-fact'))}; ROUGE-L base {_num(base.get('rouge-l'))}, "
            f"tuned {_num(tuned.get('rouge-l'))}"
        )
        rag = m.get("tuned+retrieval")
        if rag:
            text += f"; with retrieval: tuned {_pct(rag.get('key-fact'))}, recall@5 {_pct(rag.get('recall@k'))}"
        text += "\n" + "\n".join("      " + line for line in format_report(metrics).splitlines())
        return StepReport(
            "evaluate",
            summary=text,
            files=[self._rel(out), self._rel(out.parent / "examples.jsonl")],
            data={"metrics": m, "table": format_report(metrics)},
        )

    def chat(self) -> StepReport:
        cm = self._chat_model()
        try:
            learned = self._find_learned(cm)
            if learned is None:
                from .chat import GenOptions

                q = read_jsonl(QA_SEED_FILE)[0]["question"]
                answer = cm.answer([{"role": "user", "content": q}], GenOptions(self.s.probe_new_tokens, 0.0))
                return StepReport(
                    "chat",
                    summary=f"Q: {q}\n      tuned: {answer}\n      No question was found whose key facts the tuned "
                    "model gives and the base model does not; train longer (--steps).",
                )
            self.learned = learned
            return StepReport(
                "chat",
                summary=f"Q: {learned['question']}\n      tuned: {learned['tuned']}\n      base:  {learned['base']}",
                data=learned,
            )
        finally:
            cm.unload()
            self._cm = None

    def _find_learned(self, cm) -> dict | None:
        """A question whose key facts the tuned model gives and the base model does not.

        The evaluate step's test-split answers are looked at first (questions held out from training); then the seed
        questions of the train split are asked (facts the model was taught).
        """
        key_facts, key_fact_score = _need(_module("evaluate"), "key_facts", "key_fact_score")
        seed_qs = {r["question"] for r in read_jsonl(QA_SEED_FILE)}
        examples = runs.eval_metrics_path(self.run_dir).with_name("examples.jsonl")  # written next to the scores
        for r in read_jsonl(examples) if examples.exists() else []:
            if r.get("key_facts") and r.get("tuned_key-fact") == 100 and (r.get("base_key-fact") or 0) < 100:
                return _learned(r["question"], r["reference"], r["base_answer"], r["tuned_answer"], "test", seed_qs)
        from .chat import GenOptions

        train = [_qa_of(rec) for rec in read_jsonl(self.ws.dataset_dir / "train.jsonl")]
        cands = [(q, a) for q, a in train if q in seed_qs and key_facts(a)]
        opts = GenOptions(self.s.probe_new_tokens, 0.0)
        for i in range(0, len(cands), 8):
            chunk = cands[i : i + 8]
            convs = [[{"role": "user", "content": q}] for q, _ in chunk]
            tuned = cm.answer_batch(convs, opts, use_adapter=True)
            base = cm.answer_batch(convs, opts, use_adapter=False)
            for (q, a), t, b in zip(chunk, tuned, base, strict=True):
                facts = key_facts(a)
                if key_fact_score(t, facts) == 100 and (key_fact_score(b, facts) or 0) < 100:
                    return _learned(q, a, b, t, "train", seed_qs)
        return None


# ---- helpers ------------------------------------------------------------------------------------------------------
def pick_seed(n: int | None) -> list[dict]:
    """``n`` seed pairs taken round-robin over their source pages (all when ``n`` is None or larger)."""
    rows = read_jsonl(QA_SEED_FILE)
    if n is None or n >= len(rows):
        return rows
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    picked: list[dict] = []
    queues = list(by_source.values())
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def _module_named(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise StepUnavailable(f"{name} does not exist") from exc


def _qa_of(rec: dict) -> tuple[str, str]:
    msgs = [m for m in rec.get("messages", []) if m.get("role") in ("user", "assistant")]
    return msgs[-2]["content"], msgs[-1]["content"]


def _learned(q: str, ref: str, base: str, tuned: str, split: str, seed_qs: set[str]) -> dict:
    origin = SEED_TAG if q in seed_qs else GENERATED_TAG
    return {"question": q, "reference": ref, "base": base, "tuned": tuned, "split": split, "origin": origin}


def _pct(v) -> str:
    return "—" if v is None else f"{v:.0f}%"


def _num(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def _machine() -> dict:
    import os
    import platform

    info = {"python": platform.python_version(), "cpu_cores": os.cpu_count(), "platform": platform.platform()}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help="project folder for the demo (default: data/workspaces/qingshan-demo; an earlier demo folder is reused)",
    )
    parser.add_argument("--fast", action="store_true", help="a tiny run (few pages, few steps) to check the plumbing")
    parser.add_argument("--steps", type=int, help="training steps (default 80; --fast: 4)")
    parser.add_argument("--seed-pairs", type=int, help="hand-written pairs to add (default: all 45; 0 = none)")
    parser.add_argument("--gen-pages", type=int, help="pages to generate Q&A from (default 4)")


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings.fast() if args.fast else DemoSettings()
    if args.steps:
        settings.max_steps = args.steps
    if args.seed_pairs is not None:
        settings.seed_pairs = args.seed_pairs
    if args.gen_pages:
        settings.gen_pages = args.gen_pages
    ws = prepare_workspace(args.workspace)
    report = Demo(ws, settings, out=lambda s: print(s, flush=True)).run()
    failed = [s["step"] for s in report["steps"] if s["status"] == "failed"]
    if failed:
        print(f"Error: step(s) {', '.join(failed)} failed; see the messages above.", file=sys.stderr)
        return 1
    return 0


def summary_json(ws: Workspace) -> dict | None:
    """The last demo report of ``ws`` (for the dashboard), or None."""
    path = ws.root / "demo_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# ---- dashboard --------------------------------------------------------------------------------------------------
def _dashboard_site():
    """One demo site per dashboard process, shared by every browser session (``st.cache_resource``)."""
    import streamlit as st

    @st.cache_resource(show_spinner=False)
    def _site() -> DemoSite:
        return DemoSite()

    return _site()


def render_demo_card() -> None:
    """A "Try the demo" box for the Home page (call it from Home.py; Streamlit is imported only here).

    "Set up the demo project" serves the bundled site from the dashboard process, creates the ``qingshan-demo``
    workspace with the site's URL pre-filled for step 1, and makes it the current project: the user then clicks
    through the wizard. "Run the whole demo" starts ``umtcds demo`` on that workspace as a background job.
    """
    import streamlit as st

    from . import ui
    from .i18n import tr
    from .jobs import running_job

    box = st.container(border=True)
    box.subheader(tr("🎓 试用演示：青山大学", "🎓 Try the demo: Qingshan University"))
    box.write(
        tr(
            "内置一个虚构的大学网站（约 20 个中英文页面，其中一页为 GBK 编码）。无需 GPU、无需联网即可走完全部步骤。",
            "A fictional university website is bundled (about 20 English and Chinese pages, one of them GBK-encoded). "
            "Walk through every step with no GPU and no internet.",
        )
    )
    c1, c2 = box.columns(2)
    if c1.button(tr("建立演示项目，逐步操作", "Set up the demo project, step by step"), key="demo_setup"):
        try:
            site = _dashboard_site()
            ws = Workspace.create(DEMO_NAME)
            ws.update_meta(demo=True, start_url=site.url)
        except UserError as exc:
            box.error(str(exc))
        else:
            ui.set_current_workspace(ws)
            st.session_state["demo_site_url"] = site.url
            st.rerun()
    current = ui.current_workspace()
    is_demo = current is not None and current.meta().get("demo")
    if is_demo and st.session_state.get("demo_site_url"):
        box.success(
            tr(
                f"演示项目已就绪。演示网站：{st.session_state['demo_site_url']} —— 打开「1 · 爬取网页」，网址已填好；"
                "深度设为 2 可包含中文页面。",
                f"The demo project is ready. Demo site: {st.session_state['demo_site_url']} — open '1 · Crawl'; the "
                "URL is filled in. Set depth 2 to include the Chinese pages.",
            )
        )
        ui.step_link("crawl", label=tr("前往 ", "Go to ") + ui.step_title("crawl", short=True), location=box)
    busy = is_demo and running_job(current, "demo") is not None
    if c2.button(
        tr("在后台运行完整演示（几分钟）", "Run the whole demo in the background (a few minutes)"),
        key="demo_run",
        disabled=bool(busy),
        help=tr(
            "运行 `umtcds demo`：爬取 → 生成 → 数据集 → 配置 → 训练 → 评测 → 对话。会清空演示项目中已有的步骤结果。",
            "Runs `umtcds demo`: crawl → generate → dataset → config → train → evaluate → chat. Clears the demo "
            "project's earlier step outputs.",
        ),
    ):
        try:
            ws = prepare_workspace(workspaces_root() / DEMO_NAME)
        except UserError as exc:
            box.error(str(exc))
        else:
            ui.start_step(ws, "demo", ["--workspace", str(ws.root)])
            ui.set_current_workspace(ws)
            st.rerun()
    c2.caption(ui.target_caption(Workspace(workspaces_root() / DEMO_NAME)))  # where the job writes, before it starts
    if is_demo:
        with box:
            ui.job_panel(current, "demo")
        report = summary_json(current)
        if report:
            rows = [{"step": r["step"], "status": r["status"], "seconds": r["seconds"]} for r in report["steps"]]
            box.dataframe(rows, hide_index=True)
            if report.get("learned"):
                L = report["learned"]
                box.markdown(
                    f"**{tr('微调后学会了：', 'Learned by tuning:')}** {L['question']}  \n"
                    f"{tr('微调前', 'base')}: {L['base']}  \n{tr('微调后', 'tuned')}: {L['tuned']}"
                )
