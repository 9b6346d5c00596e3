"""Ask a running vitalcast api to re-scan its model directory (POST /v1/models/reload).

    VITALCAST_RELOAD_URL=http://api:8000/v1/models/reload VITALCAST_ADMIN_KEYS=key python reload.py

Uses the first of VITALCAST_ADMIN_KEYS. Retries while the api is still starting; exits 1 when
it never answers, the key is refused, or a checkpoint failed to load.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

ATTEMPTS = 30  # one per second: covers an api that starts alongside the job
TIMEOUT_S = 120  # reloading reads every checkpoint; allow large model directories


def main() -> int:
    url = os.environ.get("VITALCAST_RELOAD_URL", "")
    keys = [k.strip() for k in os.environ.get("VITALCAST_ADMIN_KEYS", "").split(",")]
    key = next((k for k in keys if k), "")
    if not url.startswith(("http://", "https://")) or not key:
        print("reload: set VITALCAST_RELOAD_URL (http[s]://...) and VITALCAST_ADMIN_KEYS",
              file=sys.stderr)
        return 2
    # The scheme is checked above: no file:// or custom scheme reaches urlopen.
    request = urllib.request.Request(url, method="POST",  # noqa: S310
                                     headers={"Authorization": f"Bearer {key}"})
    for attempt in range(ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
                listing = json.load(answer)
            break
        except urllib.error.HTTPError as exc:  # the api answered: retrying will not help
            print(f"reload: {url} answered {exc.code}: {exc.read()[:500]!r}", file=sys.stderr)
            return 1
        except OSError as exc:  # not up yet
            if attempt == ATTEMPTS - 1:
                print(f"reload: {url} unreachable: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    loaded = [f"{m['name']}/{m['version']}" for m in listing.get("models", [])]
    print(f"reload: api now serves {', '.join(loaded) or 'nothing'}")
    for error in listing.get("errors", []):
        print(f"reload: failed to load {error['name']}/{error['version']}: {error['message']}",
              file=sys.stderr)
    return 1 if listing.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
