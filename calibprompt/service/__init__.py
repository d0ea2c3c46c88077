"""The service layer: the shared :class:`~calibprompt.service.core.Core` (backbone pool, run store, job
runner, content-keyed caches) and the per-session :class:`~calibprompt.service.session.SessionState`
that every action of the core takes."""
from calibprompt.service.core import ComparedImage, Core, EvaluationSet
from calibprompt.service.session import SessionState, new_session

__all__ = ["Core", "ComparedImage", "EvaluationSet", "SessionState", "new_session"]
