"""The HTTP listener (`[http] listen`): Prometheus metrics, health, and mail client set-up.

- http.py: a small HTTP/1.1 server (h11 parses) with bounded requests;
- app.py: the routes, and the process of `serve` that answers them;
- metrics.py: counters moved by the logged events of every process (prometheus-client's
  multiprocess mode), and gauges read from the stores at a scrape;
- health.py: heartbeat files and the checks of /healthz;
- clientconfig.py: Thunderbird autoconfig, Outlook autodiscover, Apple profiles.
"""
