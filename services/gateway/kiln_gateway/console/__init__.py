"""The web console (`/console/…`): server-rendered pages for account holders and the operator,
served by the gateway (docs/console.md). `install_console(app)` (app.py) wires it."""
