"""Starting or joining a Ray cluster, with a clear message when Ray is not installed."""
from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["require_ray", "connect", "connect_for_tasks", "local_env", "LOCAL"]

LOCAL = "local"  #: the address that starts a local Ray cluster on this machine


def require_ray():
    """The ``ray`` module; ``RuntimeError`` saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise RuntimeError('Ray is not installed. Install the optional extra: pip install -e ".[ray]" '
                           '(or pip install "calibprompt[ray]").') from None
    return ray


def connect(address: str, *, num_cpus: int | None = None, num_gpus: int | None = None, **kwargs: Any):
    """Connect to Ray: ``"local"`` starts a local cluster on this machine (``num_cpus`` / ``num_gpus``
    bound what it offers), any other address (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.5:6379"``)
    joins that cluster. Returns the ``ray`` module. An already connected driver is reused."""
    ray = require_ray()
    if not isinstance(address, str) or not address.strip():
        raise ValueError('A Ray address is "local" (a cluster on this machine) or the head node\'s address, '
                         'e.g. "auto" or "ray://head-node:10001".')
    if ray.is_initialized():
        return ray
    address = address.strip()
    options = {"include_dashboard": False, "logging_level": logging.WARNING, **kwargs}
    if address == LOCAL:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **options)
    else:
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:
            raise RuntimeError(f"Cannot reach the Ray cluster at {address!r} ({exc}). Start its head node with "
                               "`ray start --head`, or use --ray local for a cluster on this machine.") from exc
    resources = ray.cluster_resources()
    logger.info("Ray cluster: %s CPUs, %s GPUs", resources.get("CPU", 0), resources.get("GPU", 0))
    return ray


def connect_for_tasks(address: str, *, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0):
    """Check the resources each task will ask for, then :func:`connect` to ``address``; returns ``ray``.
    ``ValueError`` (before anything starts) for ``cpus_per_task <= 0`` or ``gpus_per_task < 0``."""
    if gpus_per_task < 0 or cpus_per_task <= 0:
        raise ValueError("--ray-cpus-per-task must be above 0 and --ray-gpus-per-task at least 0.")
    return connect(address)


def local_env(address: str) -> dict[str, str]:
    """The environment of the workers of a cluster at ``address``: on a local one (:data:`LOCAL`) they share
    this process's data directory (``CALIBPROMPT_HOME``) and Hugging Face cache settings; elsewhere nothing
    (each node has its own)."""
    from calibprompt.paths import data_dir

    if address.strip() != LOCAL:
        return {}
    env = {"CALIBPROMPT_HOME": str(data_dir())}
    for name in ("HF_HOME", "HF_HUB_OFFLINE"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env
