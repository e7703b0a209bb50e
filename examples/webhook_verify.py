"""What your app does with a webhook delivery: check its signature before trusting it.

Streamq-Signature is ``v1=`` and the HMAC-SHA256, with your secret, of the Streamq-Timestamp,
a dot and the raw body. Run as a script, it signs a delivery as streamq does and checks it."""

import hashlib
import hmac
import time


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    timestamp = headers["Streamq-Timestamp"]
    if abs(time.time() - int(timestamp)) > 300:  # refuse replays of old deliveries
        return False
    signed = timestamp.encode() + b"." + body
    expected = "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["Streamq-Signature"])


if __name__ == "__main__":
    body = b'{"type": "done", "job": "instagram:19ab5f0c2e1-8d2f0a6b9c41"}'
    now = str(int(time.time()))
    mac = hmac.new(b"whsec-example", now.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"Streamq-Timestamp": now, "Streamq-Signature": "v1=" + mac}
    assert verify("whsec-example", headers, body)
    assert not verify("another-secret", headers, body)
    assert not verify("whsec-example", headers, body + b" ")
    print("signature checked")
