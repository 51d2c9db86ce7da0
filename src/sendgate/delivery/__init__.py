"""After the 250: routing, outbound SMTP, TLS policy (MTA-STS, DANE), scheduling and bounces."""
