"""Real network peers (DNS server, SMTP receivers) that tests run on loopback."""
