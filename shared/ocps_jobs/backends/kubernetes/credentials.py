"""The client library's ApiClient from the settings, its credential refresh throttled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from ...config import Settings

__all__ = ["ThrottledRefresh", "new_api_client"]


class ThrottledRefresh:
    """Runs the client's credential refresh at most once per ``interval`` seconds.

    Both config loaders refresh before every request by applying their whole
    configuration again, whose ``host`` setter re-reads the proxy environment: a fifth of
    a create's CPU. The loaders still decide themselves whether a token has expired; this
    only lets them look once a second instead of on every request.
    """

    def __init__(
        self,
        configuration: Any,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hook = configuration.refresh_api_key_hook
        self.interval = interval
        self.clock = clock
        self.last = -float("inf")
        self.lock = threading.Lock()
        configuration.refresh_api_key_hook = self

    def __call__(self, configuration: Any) -> None:
        with self.lock:
            now = self.clock()
            if now - self.last < self.interval:
                return
            self.last = now
            self.hook(configuration)
            if configuration.refresh_api_key_hook is not self:  # a loader set its hook anew
                self.hook = configuration.refresh_api_key_hook
                configuration.refresh_api_key_hook = self


def new_api_client(settings: Settings) -> k8s.ApiClient:
    """The ApiClient of the configured kubeconfig, else in-cluster, else the default one."""
    if settings.kubeconfig is not None:
        api: k8s.ApiClient = k8s_config.new_client_from_config(config_file=str(settings.kubeconfig))
    else:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        api = k8s.ApiClient()
    if api.configuration.refresh_api_key_hook is not None:
        ThrottledRefresh(api.configuration)
    return api
