"""Models: the app's default backbone, its background load and warm-up, the models users may switch to.

The backbones themselves live in the shared :class:`~calibprompt.service.pool.BackbonePool`; this module
decides which one a session uses and keeps the default one loaded. Functions take the shared
:class:`~calibprompt.service.core.Core` (its ``pool`` and default model) and return data.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from calibprompt import defaults
from calibprompt.backbones import get_backbone_spec
from calibprompt.devices import resolve_device
from calibprompt.service.pool import BackbonePool, LoadedBackbone
from calibprompt.service.startup import default_task_for

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

logger = logging.getLogger(__name__)

__all__ = ["DefaultModel", "pin_default", "Preload", "warm_up", "loaded", "model_family", "model_choices",
           "switch_model", "banner", "banner_for"]


@dataclass(frozen=True)
class DefaultModel:
    """The model the app starts on: its ``name``, ``device`` (a string), ``family``, ``description`` and the
    ``task`` its family starts on."""

    name: str
    device: str
    family: str
    description: str
    task: str


def pin_default(pool: BackbonePool, backbone: Any, device: Any = None) -> DefaultModel:
    """Pin the default model in ``pool``: a loaded backbone is added as is; a registered name is pinned to
    load on first use (on ``device``, default: the best available). An unknown name or device fails here,
    before anything loads."""
    if isinstance(backbone, str):
        spec = get_backbone_spec(backbone)
        device = str(resolve_device(device))
        pool.pin(backbone, device)
        return DefaultModel(backbone, device, spec.family, spec.description, default_task_for(spec.family))
    pool.add(backbone, pin=True)
    return DefaultModel(backbone.name, str(backbone.device), backbone.family, backbone.description,
                        default_task_for(backbone.family))


def banner(model: DefaultModel, given: str = "", notice: str | None = None) -> str:
    """The start-up banner: ``given`` (which model and why) or the model's name and description, with the run
    store's ``notice`` (a damaged database set aside) added as a warning in the same paragraph."""
    text = given or f"Model: {model.name}. {model.description}"
    return f"{text} Warning: {notice}" if notice else text


class Preload:
    """The default model's background load: started once, every later call gets the same future."""

    def __init__(self) -> None:
        self._ready: Future[LoadedBackbone] | None = None
        self._lock = threading.Lock()

    def start(self, name: str, load: Callable[[], LoadedBackbone],
              warm: Callable[[LoadedBackbone], None] | None = None) -> Future[LoadedBackbone]:
        """Run ``load`` (then ``warm``) in a daemon thread, once. A failed load is logged and set on the
        future; a failed warm-up is only logged (the first request computes what is missing)."""
        with self._lock:
            if self._ready is not None:
                return self._ready
            self._ready = ready = Future()
        ready.set_running_or_notify_cancel()

        def run() -> None:
            try:
                model = load()
            except BaseException as exc:  # noqa: BLE001 - reported on the future and in the log
                logger.exception("Loading the app's model %s failed", name)
                ready.set_exception(exc)
                return
            if warm is not None:
                try:
                    warm(model)
                except Exception:  # noqa: BLE001 - the first request computes what is missing
                    logger.exception("Warming up the app's model %s failed", name)
            logger.info("The app's model %s is ready", name)
            ready.set_result(model)

        threading.Thread(target=run, name=f"calibprompt-start-{name}", daemon=True).start()
        return ready


def warm_up(core: Core, model: LoadedBackbone) -> None:
    """Compute the default session's heads and run the image encoder once (its first pass sets up the
    kernels), without touching the engine's image cache or counters."""
    from PIL import Image

    state = core.new_session()
    core.resolve_heads(state, [h for h in defaults.DEFAULT_HEADS if h in core.prompt_choices(state)])
    model.backbone.encode_image([Image.new("RGB", (224, 224), (128, 128, 128))])


def loaded(core: Core, state: SessionState) -> LoadedBackbone:
    """This session's model from the shared pool (the default one on its pinned device)."""
    return core.pool.get(state.model, core.default_device if state.model == core.default_model else None)


def model_family(core: Core, name: str) -> str:
    """A model's family (for its defaults), without loading it when it is the default or a registered model."""
    if name == core.default_model:
        return core.default_family
    from calibprompt.backbones import BACKBONES

    spec = BACKBONES.get(name)
    return spec.family if spec is not None else core.pool.get(name).backbone.family


def model_choices(allowed: list[str] | None) -> list[str]:
    """The models users may switch to: ``allowed``, else every registered one but the test twins."""
    from calibprompt.backbones import BACKBONES

    if allowed is not None:
        return list(allowed)
    return [n for n, spec in BACKBONES.items() if not spec.is_twin_only]


def switch_model(core: Core, state: SessionState, name: str) -> SessionState:
    """This session's model becomes ``name`` (loaded once for everyone), on its family's default task."""
    choices = core.model_choices()
    if name not in choices:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(choices)}.")
    backbone = core.pool.get(name).backbone
    return state.with_(model=name, task=default_task_for(backbone.family), classes=(),
                       prompts=defaults.DEFAULT_HEADS)


def banner_for(core: Core, state: SessionState) -> str:
    """The banner of this session's model: the start-up banner for the default model, else its name and
    description."""
    if state.model == core.default_model:
        return core.banner
    backbone = core.loaded(state).backbone
    return f"Model: {backbone.name}. {backbone.description}"
