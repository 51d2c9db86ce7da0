"""DKIM for outgoing mail: signing keys and the signer. Callers import the modules directly.

- keys.py: the key directory layout (`<key_dir>/<domain>/<selector>.<algorithm>.key`), key
  generation, loading and checking the keys, the DNS TXT record to publish, and the domain and
  selector rules the signer shares.
- signer.py: `DkimSigner` (dkimpy canonicalizes and hashes; the RSA private-key step runs in
  `cryptography`, Ed25519 in dkimpy) and `DkimError`.
"""
