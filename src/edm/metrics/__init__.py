"""/metrics in the Prometheus text format (docs/operations.md#metrics).

- `database`: the deployment's state read from the database at scrape time (queue, services, tasks, workers);
- `exposition`: who may scrape and the answer (this process's `edm.telemetry` metrics, then the database's);
- `asgi`: the web app's /metrics and its per-route HTTP and webhook counts;
- `server`: the small HTTP server an `edm worker` answers /metrics on.
"""
