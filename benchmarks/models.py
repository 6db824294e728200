"""Which network the benchmark times, and where its weights came from (said in every report).

The paper's latency setting is MobileNetV2 (width 1.0) at 224x224, so that is
what ``tsm-bench`` measures by default: with the upstream Jester weights when
they are already in the local cache (no download is triggered), otherwise
with seeded random weights of the same architecture -- per-frame latency
depends on the architecture and the input size, not on the weight values.
``--weights`` picks any other checkpoint (``default`` = the small model
shipped with the package), ``--input-size`` another resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from online_tsm.checkpoint import load_model, model_info
from online_tsm.labels import JESTER_LABELS
from online_tsm.models import MobileNetV2TSM
from online_tsm.weights import cache_dir, find_entry

PAPER_INPUT_SIZE = 224
PAPER_WIDTH = 1.0


@dataclass
class BenchModel:
    tsm: MobileNetV2TSM
    tsn: MobileNetV2TSM
    weights: str          # what was asked for, or "paper setting"
    description: str      # where the weights came from, in words

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
    torch.manual_seed(seed)
    model = MobileNetV2TSM(n_class=len(JESTER_LABELS), width_mult=PAPER_WIDTH, input_size=input_size)
    model.info = model_info(model, labels=list(JESTER_LABELS))
    return model.eval()


def resolve_bench_model(weights: str | None = None, input_size: int | None = None, seed: int = 0) -> BenchModel:
    """Load what ``--weights`` / ``--input-size`` ask for (``weights=None``: the paper setting)."""
    if weights is None:
        size = input_size or PAPER_INPUT_SIZE
        if jester_cached():
            model = load_model("jester", input_size=size)
            description = "upstream Jester weights (from the local cache)"
        else:
            model = random_paper_model(seed, size)
            description = (f"seeded random weights (seed {seed}) of the upstream MobileNetV2 TSM, width 1.0: "
                           "latency does not depend on weight values (Jester weights not in the local cache)")
        return BenchModel(model, tsn_twin(model), "paper setting", description)
    model = load_model(weights, input_size=input_size)
    return BenchModel(model, tsn_twin(model), weights, f"weights {weights}")
