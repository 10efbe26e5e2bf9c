"""GLS services: bound workers, coordinator, gateway, and the `gls` command line."""
