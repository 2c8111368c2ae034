"""Spread an HTTP client's requests over the balancer's backends by changing one line.

- :mod:`.httpx`: ``httpx.AsyncClient(transport=LoadBalancedTransport(lb))``;
- :mod:`.aiohttp`: ``aiohttp.ClientSession(middlewares=[LoadBalancedMiddleware(lb)])``, or
  ``load_balanced_session(lb)``.

Both read the routing :class:`~load_balancing_module.Request` off each HTTP request
(:mod:`.request_info`), send it to the chosen backend's host and port under
``lb.call_held`` (the balancer's retries and outcome predicates) and release the backend's
slot when the response body is closed.

``import load_balancing_module`` does not import this package: each integration needs its
client (the ``[httpx]`` and ``[aiohttp]`` extras). Import the one you use.
"""
