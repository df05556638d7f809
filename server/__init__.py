"""The HTTP localisation service robots query: ``server.app.create_app`` and ``spikebot serve`` (WebSocket stream,
map building over HTTP, client, container and Ray Serve are still to come: issue 5)."""
