"""Benchmark presets: model sizes, data shape and training budgets per family and scale.

A preset fixes everything a comparison holds equal: the source and target
sizes, the data (sequence length, batch, vocabulary or image size), the source's
pretraining budget, the :class:`~growkit.train.TrainConfig` every target trains
with (at scratch's best peak lr of a sweep; scratch or the grown targets may take
a schedule of their own), and the learned operators' fit budget.
Sizes and budgets were chosen by measuring on a 2-core CPU (see BENCHMARKS.md):

- ``smoke``: seconds per run; exercises the whole pipeline (tests use it).
- ``tiny``: 2-core CPU, <= ~30 minutes per family for the full method list and
  one seed; budgets sized so scratch is near-converged (its eval loss improves
  by < ~2% over the last fifth).
- ``tiny-long`` (gpt2, llama, bert): the tiny sizes with a 2.5x longer target
  budget, where the target pulls clearly away from the small model (GPT-2:
  scratch ends 9% below it) and the learned operators' 100-step fit is about 4%
  of the budget, so savings measure more than the head start (BENCHMARKS.md).
- ``small``: for a GPU (``device="auto"``): 6L/256 -> 12L/512 class models, 800 steps (the embedded corpus
  holds no more than about two passes for them).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import PretrainedConfig

from ..arch import ADAPTERS, CAUSAL, IMAGE, adapter_for, family_adapter
from ..core.canonical import Dims
from ..core.errors import GrowError
from ..train import TrainConfig

PRESETS = ("smoke", "tiny", "tiny-long", "small")
#: the causal tiny presets' grown targets: the lr decay reaches its floor at this share of the steps
GROWN_DECAY_FRACTION = 0.75


@dataclass(frozen=True)
class Size:
    """A model size: layers, hidden width and heads (head_dim = hidden / heads; FFN = 4 x hidden)."""

    layers: int
    hidden: int
    heads: int

    def __str__(self) -> str:
        return f"{self.layers}L/{self.hidden}"


@dataclass(frozen=True)
class Budget:
    """The TrainConfig fields a preset sets; the rest keep TrainConfig's defaults."""

    steps: int
    lr: float
    warmup: int
    eval_every: int
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1

    def config(self, seed: int, device: str = "cpu", progress: bool | None = None) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, warmup=self.warmup, eval_every=self.eval_every,
                           schedule=self.schedule, min_lr_ratio=self.min_lr_ratio, seed=seed, device=device,
                           progress=progress)


@dataclass(frozen=True)
class Preset:
    """Everything one benchmark holds fixed for one family at one scale."""

    name: str
    family: str
    source: Size
    target: Size
    source_budget: Budget  #: the small model's pretraining
    budget: Budget  #: every target's training (scratch and grown alike, unless scratch_train or grown_train says)
    fit_steps: int = 100  #: the fit steps of learned methods that fit by default (mango takes its start unless a variant says)
    fit_lr: float | None = None  #: the operators' own learning rate for every learned method; None: each method's default
    seq_len: int = 64
    batch_size: int = 16
    vocab_size: int = 2048  #: BPE vocabulary trained on the text (text families)
    text_chars: int | None = None  #: use only the corpus's first N characters (None: all)
    image_size: int = 16  #: ViT
    patch_size: int = 4  #: ViT
    eval_batches: int = 8
    eval_fraction: float = 0.1  #: held-out share of the data (its eval set is at most eval_batches batches)
    device: str = "cpu"
    method_options: dict = field(default_factory=dict)  #: per-method grow() options, e.g. {"mango": {"rank": 1}}
    #: scratch's own schedule (``--scratch-lr``), e.g. {"train_lr": 4e-3}; the presets set none: their budget's
    #: lr is scratch's best of a sweep (BENCHMARKS.md, "Scratch's learning rate"), and the grown targets share it
    scratch_train: dict = field(default_factory=dict)
    #: the grown targets' own schedule, e.g. {"train_lr": 1e-3, "train_warmup": 10}: a grown model starts
    #: trained, so the peak lr and warm-up tuned for scratch need not suit it; one recipe for every method
    grown_train: dict = field(default_factory=dict)

    def train_overrides(self, scratch: bool) -> dict:
        """The schedule fields (``train_lr``, ``train_warmup``) that differ from ``budget`` for scratch or a grown target."""
        return dict(self.scratch_train if scratch else self.grown_train)

    def replace(self, **changes) -> "Preset":
        """A copy with some fields changed; ``budget_*``/``source_*`` keys change a budget's fields."""
        budget = {k.removeprefix("budget_"): v for k, v in changes.items() if k.startswith("budget_")}
        source = {k.removeprefix("source_budget_"): v for k, v in changes.items() if k.startswith("source_budget_")}
        rest = {k: v for k, v in changes.items() if not k.startswith(("budget_", "source_budget_"))}
        if budget:
            rest["budget"] = dataclasses.replace(self.budget, **budget)
        if source:
            rest["source_budget"] = dataclasses.replace(self.source_budget, **source)
        return dataclasses.replace(self, **rest)

    @property
    def images(self) -> bool:
        """Whether the family learns from images (digits or an image folder) rather than text."""
        return family_adapter(self.family).objective == IMAGE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- configs ------------------------------------------------------------
    def source_config(self, vocab_size: int | None = None, num_labels: int | None = None) -> PretrainedConfig:
        """The small model's config (vocabulary from the tokenizer, labels from the image data)."""
        s, adapter = self.source, family_adapter(self.family)
        if s.hidden % s.heads:
            raise GrowError(f"preset {self.name}: {s.heads} heads do not divide hidden {s.hidden}")
        config = adapter.tiny_config(**adapter.task_fields(
            seq_len=self.seq_len, vocab_size=vocab_size or self.vocab_size, image_size=self.image_size,
            patch_size=self.patch_size, num_labels=num_labels or 10))
        adapter.write_dims(config, Dims(hidden=s.hidden, ffn=4 * s.hidden, heads=s.heads, kv_heads=s.heads,
                                        head_dim=s.hidden // s.heads, layers=s.layers))
        return config

    def target_config(self, source_config: PretrainedConfig) -> PretrainedConfig:
        """The target's config: the source's at the target's layers and width (head_dim kept)."""
        t = self.target
        config = adapter_for(source_config).target_config(
            source_config, {"num_hidden_layers": t.layers, "hidden_size": t.hidden, "num_attention_heads": t.heads}
        )
        return config


def _presets(family: str) -> dict[str, Preset]:
    smoke = Preset(
        "smoke", family, Size(1, 32, 2), Size(2, 64, 4),
        source_budget=Budget(steps=20, lr=3e-3, warmup=4, eval_every=10),
        budget=Budget(steps=20, lr=3e-3, warmup=4, eval_every=5),
        fit_steps=3, seq_len=32, batch_size=8, vocab_size=300, text_chars=100_000,
        image_size=8, patch_size=4, eval_batches=2,
    )
    tiny = Preset(
        "tiny", family, Size(2, 64, 4), Size(4, 128, 8),
        source_budget=Budget(steps=1000, lr=3e-3, warmup=40, eval_every=100),
        budget=Budget(steps=1000, lr=2e-3, warmup=40, eval_every=25),
        fit_steps=100, seq_len=64, batch_size=16, vocab_size=2048,
    )
    # The embedded corpus (1.47 M tokens) holds about 360 batches of 32 x 128: the 12L/512 target over-fits it
    # after ~1100 steps (on an H100, scratch's eval loss was lowest near step 1090 of 2400 and ended above the
    # small model's), so the budget stays near two passes; pass --data and --steps for a longer one
    small = Preset(
        "small", family, Size(6, 256, 4), Size(12, 512, 8),
        source_budget=Budget(steps=533, lr=1e-3, warmup=200, eval_every=250),
        budget=Budget(steps=800, lr=6e-4, warmup=80, eval_every=80),
        fit_steps=100, seq_len=128, batch_size=32, vocab_size=8192, device="auto",
    )
    if family_adapter(family).objective == IMAGE:  # digits: 1,797 images; patches of 4 on 16x16 -> 17 positions
        # a 30% held-out split (539 images, all evaluated) keeps the eval loss from being a few lucky images
        tiny = tiny.replace(batch_size=32, image_size=16, patch_size=4, eval_fraction=0.3, eval_batches=17,
                            budget_lr=1e-3)
        small = small.replace(batch_size=64, image_size=32, patch_size=4)
        return {"smoke": smoke, "tiny": tiny, "small": small}
    if family_adapter(family).objective == CAUSAL:
        # scratch's best peak lr in a 3-seed sweep on GPT-2 and Llama (BENCHMARKS.md, "Scratch's learning
        # rate"); the grown targets share it: a lower lr for them lost at 2500 steps (1e-3 and 2e-3 measured).
        # The grown targets' decay ends at 3/4 of the steps: over those steps a grown run follows the schedule
        # of a run on 3/4 of scratch's budget, which is what a user who grows to save compute trains
        # ("The schedule after growth: a faster decay"); scratch keeps its full cosine, which it prefers
        tiny = tiny.replace(budget_lr=3e-3, grown_train={"train_decay_fraction": GROWN_DECAY_FRACTION})
    # tiny-long is defined for the text families;
    # eval every 50: an evaluation costs ~4 training steps, so every 25 would add ~16% to the run
    tiny_long = tiny.replace(name="tiny-long", budget_steps=2500, budget_eval_every=50)
    return {"smoke": smoke, "tiny": tiny, "small": small, "tiny-long": tiny_long}


def demo_preset() -> Preset:
    """``growkit demo``: the gpt2 tiny preset with short budgets, about 3.5 minutes on 2 idle cores with 2 workers.

    The source pretrains only 250 steps, so that scratch's 360-step target still ends below the small model's
    loss and growth has real work to do (with the tiny preset's 1000-step source it would not). The learned
    operators fit 25 steps: at this budget a 100-step fit would cost over a quarter of scratch's compute.
    An evaluation costs about four training steps, so the demo evaluates every 40 steps.
    """
    return get_preset("gpt2", "tiny").replace(
        name="demo", budget_steps=360, budget_eval_every=40, source_budget_steps=250, source_budget_eval_every=50,
        fit_steps=25,
    )


def get_preset(family: str, name: str) -> Preset:
    """The preset ``name`` (smoke, tiny, tiny-long, small) for ``family`` (any registered family)."""
    family_adapter(family)  # an unknown family is refused with the list of known ones
    if name not in PRESETS:
        raise GrowError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    presets = _presets(family)
    if name not in presets:
        text = [a.family for a in ADAPTERS.values() if a.objective != IMAGE]
        raise GrowError(f"preset {name!r} is defined for the text families ({', '.join(text)}), not {family}")
    return presets[name]
