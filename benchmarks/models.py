"""Which network the benchmark times, and where its weights came from (said in every report).

With no ``--weights``, ``tsm-bench`` times the model users get by default --
the small model shipped in the package (``online_tsm.weights.default_weights``),
what ``tsm-demo`` runs -- at its own input size.  A build without that asset
falls back to the paper setting.

``--weights paper`` is the paper's latency setting: MobileNetV2 (width 1.0)
at 224x224, with the upstream Jester weights when they are already in the
local cache (no download is triggered), otherwise with seeded random weights
of the same architecture -- per-frame latency depends on the architecture and
the input size, not on the weight values.  Any other ``--weights`` value is a
checkpoint path or weights name; ``--input-size`` picks another resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

from online_tsm.checkpoint import load_model, model_info
from online_tsm.labels import JESTER_LABELS
from online_tsm.models import MobileNetV2TSM, seeded_model
from online_tsm.weights import DEFAULT_NAME, cache_dir, default_weights, find_entry

PAPER_INPUT_SIZE = 224
PAPER_WIDTH = 1.0
PAPER_WEIGHTS = "paper"  # --weights value for the paper setting


@dataclass
class BenchModel:
    tsm: MobileNetV2TSM
    tsn: MobileNetV2TSM
    weights: str          # what was asked for: a path or name, "default" or "paper"
    description: str      # where the weights came from, in words
    trained: bool = True  # False for seeded random weights: speed is meaningful, int8 agreement is not

    @property
    def paper_setting(self) -> bool:
        return self.tsm.input_size == PAPER_INPUT_SIZE and self.tsm.width_mult == PAPER_WIDTH


def tsn_twin(model: MobileNetV2TSM) -> MobileNetV2TSM:
    """The same network and weights with every shift removed: the TSN baseline."""
    twin = MobileNetV2TSM(n_class=model.n_class, width_mult=model.width_mult, input_size=model.input_size,
                          shift_blocks=(), fold_div=model.fold_div)
    twin.load_state_dict(model.state_dict())
    twin.info = model_info(model, shift_blocks=())
    return twin.eval()


def jester_cached() -> bool:
    """True when the upstream Jester weights are already on disk (loading them needs no network)."""
    entry = find_entry("jester")
    return entry is not None and (cache_dir() / entry.filename).is_file()


def random_paper_model(seed: int = 0, input_size: int = PAPER_INPUT_SIZE) -> MobileNetV2TSM:
    model = seeded_model(seed, n_class=len(JESTER_LABELS), width_mult=PAPER_WIDTH, input_size=input_size)
    model.info = model_info(model, labels=list(JESTER_LABELS))
    return model.eval()


def resolve_bench_model(weights: str | None = None, input_size: int | None = None, seed: int = 0) -> BenchModel:
    """Load what ``--weights`` / ``--input-size`` ask for (``None``: the shipped default, else the paper setting)."""
    if weights is None:
        weights = DEFAULT_NAME if default_weights() is not None else PAPER_WEIGHTS
    if weights == PAPER_WEIGHTS:
        return paper_bench_model(input_size, seed)
    model = load_model(weights, input_size=input_size)
    if weights == DEFAULT_NAME:
        description = (f"the shipped default model ({default_weights().name}, width {model.width_mult:g}, "
                       f"{model.input_size}x{model.input_size}); --weights paper for the paper's setting")
    else:
        description = f"weights {weights}"
    return BenchModel(model, tsn_twin(model), weights, description)


def paper_bench_model(input_size: int | None = None, seed: int = 0) -> BenchModel:
    """MobileNetV2 width 1.0 at 224 (or ``input_size``): Jester weights if cached, else seeded random ones."""
    size = input_size or PAPER_INPUT_SIZE
    if jester_cached():
        model = load_model("jester", input_size=size)
        description = "paper setting: upstream Jester weights (from the local cache)"
    else:
        model = random_paper_model(seed, size)
        description = (f"paper setting: seeded random weights (seed {seed}) of the upstream MobileNetV2 TSM, "
                       "width 1.0: latency does not depend on weight values (Jester weights not in the local cache)")
        return BenchModel(model, tsn_twin(model), PAPER_WEIGHTS, description, trained=False)
    return BenchModel(model, tsn_twin(model), PAPER_WEIGHTS, description)
