"""Entry points that run one upstream server as its own process (managed upstreams).

Each submodule is a `python -m geniehive.launch.<kind>` command meant to sit in an upstream's
`launch.command`; the launcher (`geniehive.launcher`) starts, supervises and stops it.
"""
