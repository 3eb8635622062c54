"""Run a savings benchmark: pretrain (or reuse) the source, grow it with every method, train every target.

Layout of the output folder::

    OUT/bench.json                          the settings; a rerun must match them
    OUT/tokenizer/                          the BPE every run shares (text families)
    OUT/source-<family>-<preset>-seed<k>/   the small model: train/ (metrics, final model), source.json, DONE
    OUT/seed<k>/<method>/                   one target run: train/metrics.jsonl, run.json, DONE

A run with a ``DONE`` marker is loaded, not retrained; a folder without one is
an interrupted run and is started again from scratch. Within a seed every
target (scratch and grown alike) trains with the same TrainConfig and the same
data order (``train_batches(seed)``), is evaluated on the same batches, and
only its initial weights differ. Learned operators fit on the same TaskData;
their FLOPs are measured (one fit step under ``count_flops`` times the steps
taken, plus the final materialisation) and their wall time is the whole
``grow`` call; both are passed to the training loop as offsets, so the curves
start at the operator's cost.

With ``jobs > 1`` the runs go to that many worker processes (spawned, one CPU
thread each, like a sequential run, unless ``threads`` says otherwise): first every seed's source, then
every (seed, method) target of a seed whose source is ready. A run's result
does not depend on ``jobs``: each one seeds itself, loads its source from disk
and trains with the same settings as in a sequential run. Each run records the
load average while it worked (:mod:`.load`), so wall times from a busy machine
can be flagged. ``redo`` reruns finished runs.

Under a multi-process launch every run is distributed (all processes take part
in every fit and every training run, see :mod:`growkit.distributed`) and only
rank 0 writes to OUT.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..api import grow
from ..arch import adapter_for
from ..core.errors import GrowError
from ..data import TaskData, TokenTaskData, build_task_data, embedded_text, is_token_folder, load_tokenizer, read_text, train_bpe
from ..device import resolve_device
from ..fit import FitConfig, target_loss
from ..estimate import parameter_count
from ..flops import count_flops, flops_per_batch, measure_flops
from ..io import load_pretrained, model_class
from ..ops import get_method, methods as registered_methods
from ..progress import lines_to, progress_bar
from ..train import train
from .load import LoadMonitor
from .presets import Preset
from .variants import Variant, parse_variant, with_schedule

#: every method the benchmark knows, in report order; "scratch" is the baseline
DEFAULT_METHODS = ("scratch", "stackbert", "interpolate", "net2net", "bert2bert", "exact", "ligo", "mango")
DONE = "DONE"
#: preset fields that only some runs depend on; recorded per run, not in the benchmark's fingerprint
PER_RUN = ("fit_steps", "fit_lr", "method_options", "scratch_train", "grown_train")
SOURCE_DATA_SEED = 10_000  #: the source trains on train_batches(SOURCE_DATA_SEED + seed), not the targets' order


@dataclass
class BenchSpec:
    """What to run: a preset, the methods, the seeds and the data."""

    preset: Preset
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    data: str | None = None  #: text file/folder, image folder or "digits"; None: the embedded default
    progress: bool | None = False  #: progress of training and fitting: a tqdm bar on a terminal (jobs 1), else lines
    keep_models: bool = False  #: keep every trained target's final model (else only the curves)
    #: torch CPU threads per process (None: 1). The thread count changes float sums in the last bits, so one
    #: default for every ``jobs`` keeps a run's numbers independent of it.
    threads: int | None = None
    jobs: int = 1  #: worker processes for the runs (1: all in this process)
    redo: bool = False  #: rerun finished runs instead of reusing them

    def settings(self) -> dict:
        """What every run's result depends on: the preset and the data.

        The methods, seeds and the learned operators' fit settings and options
        are not part of it: each run records its own (:meth:`run_settings`), so
        variants such as ``mango+rank=2`` can join a finished benchmark.
        """
        preset = {k: v for k, v in self.preset.to_dict().items() if k not in PER_RUN}
        return {"preset": preset, "data": self.data or "default"}

    def variant(self, entry: str) -> Variant:
        base = entry.split("+", 1)[0].strip()
        return parse_variant(entry, self.preset.method_options.get(base, {}))

    def run_settings(self, variant: Variant, learned: bool) -> dict:
        """The settings one run depends on beyond :meth:`settings`."""
        settings: dict = {"options": variant.options}
        train = {**self.preset.train_overrides(scratch=variant.method == "scratch"), **variant.train}
        if train:  # recorded only where it differs from the budget, so earlier runs stay reusable
            settings["train"] = train
        if learned:
            method = get_method(variant.method)
            settings["fit_steps"] = variant.fit.get("fit_steps", self.preset.fit_steps if method.fit_steps else 0)
            if settings["fit_steps"]:  # a start (mango's default) depends on neither
                settings["fit_lr"] = variant.fit.get("fit_lr", self.preset.fit_lr or method.fit_lr)
                settings["fit_patience"] = variant.fit.get("fit_patience", FitConfig.patience)
        return settings

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BenchResult:
    spec: BenchSpec
    out: Path
    runs: dict[int, dict[str, dict]]  #: seed -> method -> run record (run.json)
    sources: dict[int, dict]  #: seed -> source record (source.json)
    info: dict  #: data and model facts for the report
    trained: list[tuple[int, str]]  #: (seed, method) runs trained in this call (the rest were loaded)


def resolve_methods(names: list[str]) -> list[str]:
    """The entries to run, scratch first (savings are measured against it); an unknown method is refused.

    An entry is a method or a variant of one (``mango+rank=2``, see :mod:`.variants`).
    """
    available = registered_methods()
    runnable = []
    for name in dict.fromkeys(n.strip() for n in names):
        variant = parse_variant(name)
        if variant.method == "scratch" or variant.method in available:
            if variant.fit and variant.method != "scratch" and not get_method(variant.method).learned:
                raise GrowError(f"{name!r}: fit_steps and fit_lr apply to learned methods only")
            runnable.append(name)
        else:
            raise GrowError(f"unknown method {variant.method!r}; choose scratch or one of {', '.join(available)}")
    if "scratch" not in runnable:
        runnable.insert(0, "scratch")  # savings are measured against it
    else:
        runnable.insert(0, runnable.pop(runnable.index("scratch")))
    return runnable


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _check_settings(spec: BenchSpec, out: Path) -> None:
    path = out / "bench.json"
    settings = {"fingerprint": spec.fingerprint(), **spec.settings()}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != settings["fingerprint"]:
            raise GrowError(
                f"{out} holds a benchmark with other settings (preset, data or overrides differ from "
                f"{path}); choose another --out, or delete it to start over"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, settings)


def load_data(spec: BenchSpec, out: Path) -> TaskData | TokenTaskData:
    """The benchmark's TaskData; the tokenizer is trained once and kept in OUT/tokenizer."""
    p = spec.preset
    if p.images:
        path = None if spec.data in (None, "digits") else spec.data
        return build_task_data(p.family, path=path, image_size=p.image_size, batch_size=p.batch_size,
                               eval_batches=p.eval_batches, eval_fraction=p.eval_fraction, seed=0)
    if spec.data == "digits":
        raise GrowError(f"'digits' is image data, for --family vit; {p.family} takes a text file or folder")
    if spec.data and is_token_folder(spec.data):  # streamed from disk, with the folder's tokenizer and split
        return build_task_data(p.family, path=spec.data, seq_len=p.seq_len, batch_size=p.batch_size,
                               eval_batches=p.eval_batches, seed=0)
    text = read_text(spec.data) if spec.data else embedded_text(p.text_chars)
    tok_dir = out / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(tok_dir)
    else:
        tokenizer = train_bpe(text, p.vocab_size)
        tokenizer.save_pretrained(str(tok_dir))
    return build_task_data(p.family, text=text, tokenizer=tokenizer, seq_len=p.seq_len, batch_size=p.batch_size,
                           eval_batches=p.eval_batches, eval_fraction=p.eval_fraction, seed=0)


def _source_config(spec: BenchSpec, data: TaskData):
    if spec.preset.images:
        return spec.preset.source_config(num_labels=len(data.info["classes"]))
    return spec.preset.source_config(vocab_size=len(data.tokenizer))


def _fit_flops(operator, model, data: TaskData, seed: int) -> tuple[float, float, float]:
    """Measured FLOPs of one fit step (materialise, target forward, backward), of one materialisation
    and of one held-out forward of the target (a batch, weights given).

    Counted after ``grow`` on the operator it built and fit, with the grown model as the
    function the step calls (its own weights are not read), so nothing is built twice.
    """
    batch = next(data.train_batches(seed))
    model.train()

    def step() -> None:
        target_loss(operator, model, adapter_for(model), batch).backward()

    try:
        per_step = count_flops(step)
        with torch.no_grad():
            materialise = count_flops(operator)
            forward = count_flops(lambda: model(**batch))
    finally:
        model.eval()
        operator.zero_grad(set_to_none=True)
    return per_step, materialise, forward


class Runner:
    """Runs one :class:`BenchSpec` into ``out``; ``log`` gets one line per event."""

    def __init__(self, spec: BenchSpec, out: Path, log: Callable[[str], None] = print):
        self.spec, self.out, self.log = spec, Path(out), log
        self.preset = spec.preset
        self.fingerprint = spec.fingerprint()
        self.trained: list[tuple[int, str]] = []
        #: progress as log lines: a tqdm bar only works for one process on a terminal
        self.lines = bool(spec.progress) and (spec.jobs > 1 or not sys.stderr.isatty())

    # --- the small model -------------------------------------------------------
    def source_dir(self, seed: int) -> Path:
        p = self.preset
        return self.out / f"source-{p.family}-{p.name}-seed{seed}"

    def finished_source(self, seed: int) -> dict | None:
        """The record of ``seed``'s finished source (None: not finished, or ``redo``)."""
        folder = self.source_dir(seed)
        if self.spec.redo or not (folder / DONE).is_file():
            return None
        record = json.loads((folder / "source.json").read_text())
        if record.get("fingerprint") != self.fingerprint:
            raise GrowError(f"{folder} was trained with other settings; delete it or choose another --out")
        self.log(f"[seed {seed}] source: reusing {folder} (eval loss {record['eval_loss']:.4f})")
        return record

    def source(self, seed: int, data: TaskData) -> tuple[torch.nn.Module, dict]:
        """The pretrained small model of ``seed`` (trained now, or loaded from its cache) and its record."""
        record = self.finished_source(seed)
        if record is None:
            record = self.train_source(seed, data)
        return load_pretrained(self.source_dir(seed) / "train" / "final"), record

    def train_source(self, seed: int, data: TaskData) -> dict:
        """Pretrain ``seed``'s small model into its folder; returns its record."""
        folder = self.source_dir(seed)
        if distributed.is_main():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        distributed.barrier()
        config = _source_config(self.spec, data)
        torch.manual_seed(seed)
        model = model_class(config)(config)
        budget = self.preset.source_budget
        self.log(f"[seed {seed}] source {self.preset.source}: pretraining {budget.steps} steps")
        cfg = budget.config(SOURCE_DATA_SEED + seed, self.preset.device, self.spec.progress)
        with self.watch(seed, "source") as load:
            result = train(model, data, cfg, folder / "train")
        if result.diverged_at is not None:
            raise GrowError(f"the source's pretraining diverged at step {result.diverged_at}; lower the preset's lr")
        record = {"seed": seed, "fingerprint": self.fingerprint, "size": str(self.preset.source),
                  "params": parameter_count(config), "eval_loss": result.eval_loss, "flops": result.flops,
                  "seconds": result.seconds, "steps": budget.steps, "load": load.record(),
                  "threads": torch.get_num_threads(), "history": result.history}
        if distributed.is_main():
            _write_json(folder / "source.json", record)
            (folder / DONE).write_text("done\n")
        self.log(f"[seed {seed}] source: eval loss {result.eval_loss:.4f}, {result.flops:.3g} FLOPs, "
                 f"{result.seconds:.0f} s")
        return record

    @contextmanager
    def watch(self, seed: int, entry: str):
        """Record the load average while a run works; progress lines (not bars) go to the log."""
        with LoadMonitor() as load:
            if self.lines:
                with lines_to(lambda line: self.log(f"[seed {seed}] {entry}: {line}")):
                    yield load
            else:
                yield load

    # --- one target run --------------------------------------------------------
    def run_dir(self, seed: int, method: str) -> Path:
        return self.out / f"seed{seed}" / method

    def target(self, seed: int, entry: str, source, data: TaskData) -> dict:
        """Grow (or initialise) and train one target; reuse a finished run.

        ``entry`` is a method or a variant of one (``mango+rank=2``).
        """
        record = self.finished_target(seed, entry)
        return record if record is not None else self.train_target(seed, entry, source, data)

    def _variant(self, entry: str) -> tuple[Variant, bool, dict]:
        """The entry's variant, whether its method is learned, and the settings its run depends on."""
        variant = self.spec.variant(entry)
        learned = variant.method != "scratch" and get_method(variant.method).learned
        return variant, learned, self.spec.run_settings(variant, learned)

    def finished_target(self, seed: int, entry: str) -> dict | None:
        """The record of a finished target run (None: not finished, or ``redo``); refuses other settings."""
        variant, _, settings = self._variant(entry)
        folder = self.run_dir(seed, entry)
        if self.spec.redo or not (folder / DONE).is_file():
            return None
        record = json.loads((folder / "run.json").read_text())
        if record.get("fingerprint") != self.fingerprint:
            raise GrowError(f"{folder} was run with other settings; delete it or choose another --out")
        if record.get("run_settings", settings) != settings:
            raise GrowError(
                f"{folder} was run with {record['run_settings']}, not {settings}; name the change as a "
                f"variant (e.g. {variant.method}+fit_steps=300 or {variant.method}+rank=2) or choose another --out"
            )
        self.log(f"[seed {seed}] {entry}: done before (eval loss {record['eval_loss']:.4f}); reusing")
        return record

    def train_target(self, seed: int, entry: str, source, data: TaskData) -> dict:
        """Grow (or initialise) and train one target into its folder; returns its record."""
        variant, learned, settings = self._variant(entry)
        method, options = variant.method, dict(variant.options)
        folder = self.run_dir(seed, entry)
        with self.watch(seed, entry) as load:
            record = self._grow_and_train(seed, entry, method, options, learned, settings, source, data)
        record["load"] = load.record()
        if distributed.is_main():
            _write_json(folder / "run.json", record)
            (folder / DONE).write_text("done\n")
        self.trained.append((seed, entry))
        return record

    def _grow_and_train(self, seed: int, entry: str, method: str, options: dict, learned: bool, settings: dict,
                        source, data: TaskData) -> dict:
        folder = self.run_dir(seed, entry)
        if distributed.is_main():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        distributed.barrier()
        p = self.preset
        target_config = p.target_config(source.config)
        fit = None
        if method == "scratch":
            torch.manual_seed(seed)
            model = model_class(target_config)(target_config)
            grow_seconds, fit_flops = 0.0, 0.0
        elif learned:
            fit_steps = settings["fit_steps"]
            fit_lr, patience = settings.get("fit_lr", FitConfig.lr), settings.get("fit_patience", FitConfig.patience)
            fit_config = FitConfig(steps=fit_steps, lr=fit_lr, progress=bool(self.spec.progress), device=p.device,
                                   patience=patience)
            self.log(f"[seed {seed}] {entry}: " + (f"fitting the operator for {fit_steps} steps" if fit_steps
                                                     else "materialising the operator's start (no fit)"))
            start = time.perf_counter()
            model, result = grow(source, target_config, method, seed=seed, data=data, fit_config=fit_config,
                                 return_fit=True, **options)
            grow_seconds = time.perf_counter() - start
            steps, checks = len(result.losses), len(result.held_out)
            if steps:
                per_step, materialise, forward = _fit_flops(result.operator, model, data, seed)
                per_check = materialise + forward * fit_config.eval_batches  # the held-out check's cost
                fit_flops = per_step * steps + materialise + per_check * checks
            else:  # the start, materialised once: no step or check to measure
                per_step = per_check = None
                with torch.no_grad():
                    materialise = fit_flops = count_flops(result.operator)
            fit = {"steps": steps, "lr": fit_lr if steps else None, "flops": fit_flops, "flops_per_step": per_step,
                   "flops_materialise": materialise, "flops_per_check": per_check,
                   "held_out": result.held_out, "best_step": result.best_step, "stopped_at": result.stopped_at,
                   "seconds": grow_seconds, "fit_loop_seconds": result.seconds, "losses": result.losses,
                   "diverged_at": result.diverged_at, "options": options}
            self.log(f"[seed {seed}] {entry}: fit loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} "
                     f"in {grow_seconds:.1f} s, {fit_flops:.3g} FLOPs" if result.losses else f"[seed {seed}] {entry}: fit 0 steps")
        else:
            start = time.perf_counter()
            model = grow(source, target_config, method, seed=seed, **options)
            grow_seconds, fit_flops = time.perf_counter() - start, 0.0
        measured = None
        if method == "scratch":  # cross-check the analytic FLOPs of a training step against PyTorch's counter
            batch = next(data.train_batches(seed))
            model.train()
            measured = {"analytic": flops_per_batch(target_config, batch), "measured": measure_flops(model, batch)}
        cfg = with_schedule(p.budget.config(seed, p.device, self.spec.progress), settings.get("train", {}))
        self.log(f"[seed {seed}] {entry}: training {cfg.steps} steps"
                 + (f" (peak lr {cfg.lr:g}, warm-up {cfg.warmup}, decay ending at {cfg.decay_fraction:.0%} of the steps)"
                    if "train" in settings else ""))
        result = train(model, data, cfg, folder / "train", flops_offset=fit_flops, seconds_offset=grow_seconds)
        if not self.spec.keep_models and result.final_dir is not None and distributed.is_main():
            shutil.rmtree(result.final_dir, ignore_errors=True)
        record = {"method": entry, "base_method": method, "seed": seed, "fingerprint": self.fingerprint,
                  "run_settings": settings, "eval_loss": result.eval_loss,
                  "flops": result.flops, "seconds": result.seconds, "diverged_at": result.diverged_at,
                  "grow_seconds": grow_seconds, "fit_flops": fit_flops, "fit": fit, "options": options,
                  "params": parameter_count(target_config), "train_flops_check": measured,
                  "threads": torch.get_num_threads(), "history": result.history}
        self.log(f"[seed {seed}] {entry}: eval loss {result.eval_loss:.4f} after {cfg.steps} steps, "
                 f"{result.seconds:.0f} s" + (f" (diverged at step {result.diverged_at})" if result.diverged_at else ""))
        return record

    # --- everything ----------------------------------------------------------------
    def run(self) -> BenchResult:
        if self.spec.jobs < 1:
            raise GrowError(f"jobs must be at least 1, got {self.spec.jobs}")
        distributed.setup(resolve_device(self.preset.device))
        if self.spec.jobs > 1 and distributed.launched():
            raise GrowError("jobs > 1 runs the benchmark in worker processes; under torchrun/accelerate launch use jobs 1")
        threads = torch.get_num_threads()
        torch.set_num_threads(self.spec.threads or 1)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> BenchResult:
        spec, p = self.spec, self.preset
        methods = resolve_methods(spec.methods)
        distributed.on_main(_check_settings, spec, self.out)
        self.log("data: " + ("loading" if p.images else "tokenising the corpus (the first time: training the BPE)"))
        data = distributed.main_first(lambda: load_data(spec, self.out))  # rank 0 saves the tokenizer, the others load it
        if spec.jobs > 1:
            sources, runs = self._in_workers(methods)
        else:
            runs, sources = {}, {}
            for seed in spec.seeds:
                source, sources[seed] = self.source(seed, data)
                runs[seed] = {m: self.target(seed, m, source, data) for m in methods}
        config = _source_config(spec, data)
        target_config = p.target_config(config)
        info = {
            "family": p.family, "preset": p.name, "methods": methods, "seeds": list(spec.seeds),
            "source": str(p.source), "target": str(p.target),
            "source_params": parameter_count(config), "target_params": parameter_count(target_config),
            "data": spec.data or ("digits" if p.images else "embedded corpus"), "data_info": data.info,
            "vocab_size": None if data.tokenizer is None else len(data.tokenizer),
        }
        return BenchResult(spec, self.out, runs, sources, info, list(self.trained))

    def _in_workers(self, methods: list[str]) -> tuple[dict[int, dict], dict[int, dict[str, dict]]]:
        """Every unfinished run in ``spec.jobs`` worker processes: the sources first, then each seed's targets.

        The learned methods of a seed are queued first: they take longest, so the pool drains evenly.
        With progress on a terminal a bar counts the finished runs, above which the log lines scroll.
        """
        spec = self.spec
        sources: dict[int, dict] = {}
        runs: dict[int, dict[str, dict]] = {seed: {} for seed in spec.seeds}
        for seed in spec.seeds:
            record = self.finished_source(seed)
            if record is not None:
                sources[seed] = record
            for entry in methods:
                record = self.finished_target(seed, entry)
                if record is not None:
                    runs[seed][entry] = record
        order = sorted(methods, key=lambda entry: not self._variant(entry)[1])  # learned runs first: the longest
        todo = {seed: [m for m in order if m not in runs[seed]] for seed in spec.seeds}
        bar = progress_bar(len(spec.seeds) - len(sources) + sum(map(len, todo.values())), "runs",
                           enabled=bool(spec.progress) and sys.stderr.isatty())

        def log(line: str) -> None:
            with tqdm.external_write_mode():  # the line goes above the bar
                self.log(line)

        context = multiprocessing.get_context("spawn")  # fork would copy this process's OpenMP state
        queue = context.Queue()
        relay = threading.Thread(target=_relay, args=(queue, log), daemon=True)
        relay.start()
        log(f"starting {spec.jobs} worker processes ({spec.threads or 1} thread(s) each)")
        try:
            with ProcessPoolExecutor(spec.jobs, mp_context=context, initializer=_start_worker,
                                     initargs=(queue, spec.threads or 1)) as pool:
                pending: dict[Future, tuple[int, str | None]] = {}

                def queue_targets(seed: int) -> None:
                    for entry in todo[seed]:
                        pending[pool.submit(_target_job, spec, self.out, seed, entry)] = (seed, entry)

                for seed in spec.seeds:
                    if seed in sources:
                        queue_targets(seed)
                    else:
                        pending[pool.submit(_source_job, spec, self.out, seed)] = (seed, None)
                try:
                    while pending:
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            seed, entry = pending.pop(future)
                            record = future.result()  # a worker's error is raised here
                            bar.update()
                            if entry is None:
                                sources[seed] = record
                                queue_targets(seed)
                            else:
                                runs[seed][entry] = record
                                self.trained.append((seed, entry))
                except BaseException as err:
                    pool.shutdown(wait=False, cancel_futures=True)  # the queued runs never start
                    if isinstance(err, KeyboardInterrupt):  # Ctrl-C or SIGTERM: interrupt the running runs too,
                        for worker in multiprocessing.active_children():  # as Ctrl-C on a terminal does (a killed
                            os.kill(worker.pid, signal.SIGINT)  # worker could leave the log queue's lock held)
                    raise
        finally:
            queue.put(None)
            relay.join()
            bar.close()
        return sources, {seed: {m: runs[seed][m] for m in methods} for seed in spec.seeds}


# --- worker processes (jobs > 1) ------------------------------------------------------
_worker: dict = {}  #: per worker process: its log and the TaskData of each benchmark folder


def _relay(queue, log: Callable[[str], None]) -> None:
    """Hand the workers' log lines to the parent's log until a None arrives."""
    for line in iter(queue.get, None):
        log(line)


def _start_worker(queue, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker["log"] = queue.put
    _worker["data"] = {}


def _worker_runner(spec: BenchSpec, out: Path) -> tuple[Runner, TaskData]:
    """A Runner logging to the parent, and the benchmark's data (built once per worker; the tokenizer is on disk)."""
    key = str(out)
    if key not in _worker["data"]:
        _worker["data"][key] = load_data(spec, out)
    return Runner(spec, out, log=_worker["log"]), _worker["data"][key]


def _source_job(spec: BenchSpec, out: Path, seed: int) -> dict:
    runner, data = _worker_runner(spec, out)
    return runner.train_source(seed, data)


def _target_job(spec: BenchSpec, out: Path, seed: int, entry: str) -> dict:
    runner, data = _worker_runner(spec, out)
    source = load_pretrained(runner.source_dir(seed) / "train" / "final")
    return runner.train_target(seed, entry, source, data)


def run_bench(spec: BenchSpec, out: str | Path, log: Callable[[str], None] = print) -> BenchResult:
    """Run (or resume) ``spec`` into ``out`` and return every run's record; see :mod:`growkit.bench.report`.

    With ``spec.jobs > 1`` the workers are spawned, so a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard (the workers import the script's module).
    """
    return Runner(spec, Path(out), log).run()
