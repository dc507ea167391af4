"""Operations: logging, the access line, Prometheus metrics, health and job events."""

# Empty on purpose: the uploader imports ``observability.logs`` alone (stdlib and
# python-json-logger), without the server's modules.
__all__: list[str] = []
