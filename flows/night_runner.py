"""The nightly refinement on the task runner the settings name (`[night] runner`, or
`CEGRAPH_NIGHT_RUNNER` / `CEGRAPH_NIGHT_DASK_ADDRESS` in a worker's environment): the
entrypoint of the `nightly-refinement-dask` deployment. Read when this module is imported,
so a deployment moves to a Dask cluster by configuration, not code."""

from __future__ import annotations

from cegraph.flows.nightly import night_flow

nightly_refinement = night_flow()
