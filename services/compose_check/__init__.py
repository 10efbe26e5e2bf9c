"""The docker-compose cluster run for real with Podman: images built locally, the cluster up, a job through it.

    scripts/compose-check [--keep-cache] [--cache DIR]

Builds the GLS image from deploy/Dockerfile with nothing from a container registry (a Debian base made with
debootstrap, wheels from a local wheelhouse), brings docker-compose.yml up with podman-compose, trains and
certifies through it, kills a worker container mid-job, and brings everything down (deploy/README.md).
"""
