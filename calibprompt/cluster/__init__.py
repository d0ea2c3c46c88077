"""Scale-out on Ray (optional: ``pip install -e ".[ray]"``): comparison tables and reproductions as
Ray tasks (:mod:`calibprompt.cluster.runs`), large feature extractions through Ray Data
(:mod:`calibprompt.cluster.features`). :func:`~calibprompt.cluster.connect.connect` starts or joins
the cluster. Nothing here is imported by ``import calibprompt``."""
