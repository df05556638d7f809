"""The HTTP localisation service robots query: ``server.app.create_app``, ``spikebot serve`` and the Python client
``server.client`` (WebSocket stream, map building over HTTP, container and Ray Serve are still to come: issue 5)."""
