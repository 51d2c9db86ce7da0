"""Samples shared by the MTA-STS tests: the policy domain, its URL path, the RFC example."""

DOMAIN = "example.test"
PATH = "/.well-known/mta-sts.txt"
RFC_POLICY = (
    b"version: STSv1\r\n"
    b"mode: enforce\r\n"
    b"mx: mail.example.com\r\n"
    b"mx: *.example.net\r\n"
    b"mx: backupmx.example.com\r\n"
    b"max_age: 604800\r\n"
)
