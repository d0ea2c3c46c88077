"""The service layer: the shared :class:`~calibprompt.service.core.Core` (backbone pool, run store, job
runner, content-keyed caches) and the per-session :class:`~calibprompt.service.session.SessionState`
that every action of the core takes.

One module per concern, each returning data (the app and the CLI word it): ``models`` (the default model,
its background load), ``session`` (per-session state, task choice), ``heads`` (prompt menus, head
resolution), ``compare`` (compare and assess) over ``advice`` (the advice rules), ``datasets`` (samples,
uploads, sharing), ``training`` (jobs and runs), ``evaluation``, ``reviews``; ``access`` holds the ownership
rules they all apply, ``pool`` the shared backbones and caches, ``startup`` the start-up model choice.
``core`` composes them."""
from calibprompt.service.core import ComparedImage, Core, EvaluationSet
from calibprompt.service.session import SessionState, new_session

__all__ = ["Core", "ComparedImage", "EvaluationSet", "SessionState", "new_session"]
