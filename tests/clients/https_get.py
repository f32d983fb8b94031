"""One HTTPS GET with a stock Python HTTP client in its default configuration, for the
end-to-end tests: proxy and trust come from the environment alone (HTTPS_PROXY, NO_PROXY,
SSL_CERT_FILE, REQUESTS_CA_BUNDLE, ...), as in unmodified user code.

usage: https_get.py CLIENT URL [-H 'Name: value']...
  CLIENT  requests | httpx | openai
          openai: client.models.with_raw_response.list() on openai.OpenAI(api_key=...),
          so URL must be https://api.openai.com/v1/models (OPENAI_BASE_URL may move it).

Prints one JSON line: {"status": <int>, "body": "<text>"} on any HTTP answer (exit 0), or
{"error": "<type>: <message>"} on an exception (exit 1); bad arguments: exit 2.
Timeout 15 s, no retries.
"""
import json
import sys

TIMEOUT = 15.0
OPENAI_URL = "https://api.openai.com/v1/models"


def usage(message):
    print("%s\n%s" % (message, __doc__), file=sys.stderr)
    sys.exit(2)


def parse(argv):
    if len(argv) < 2:
        usage("missing arguments")
    client, url, rest = argv[0], argv[1], argv[2:]
    headers = {}
    while rest:
        if rest[0] != "-H" or len(rest) < 2 or ":" not in rest[1]:
            usage("bad arguments: %r" % rest)
        name, value = rest[1].split(":", 1)
        headers[name.strip()] = value.strip()
        rest = rest[2:]
    return client, url, headers


def with_requests(url, headers):
    import requests

    response = requests.get(url, headers=headers, timeout=TIMEOUT)
    return response.status_code, response.text


def with_httpx(url, headers):
    import httpx

    response = httpx.get(url, headers=headers, timeout=TIMEOUT)
    return response.status_code, response.text


def with_openai(url, headers):
    import openai

    if url != OPENAI_URL:
        raise ValueError("the openai client only GETs its default %s, not %s" % (OPENAI_URL, url))
    client = openai.OpenAI(api_key="sk-runtime-dummy", max_retries=0, timeout=TIMEOUT)
    try:
        raw = client.models.with_raw_response.list(extra_headers=headers or None)
        return raw.status_code, raw.http_response.text
    except openai.APIStatusError as error:
        # A non-2xx answer is still an HTTP answer.
        return error.status_code, error.response.text
    finally:
        client.close()


def describe(error):
    """The error and its causes (openai's "Connection error." says little alone)."""
    parts = []
    while error is not None and len(parts) < 4:
        part = "%s: %s" % (type(error).__name__, error)
        if part not in parts:  # httpx re-raises its transport's errors under the same name
            parts.append(part)
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


CLIENTS = {"requests": with_requests, "httpx": with_httpx, "openai": with_openai}


def main(argv):
    client, url, headers = parse(argv)
    if client not in CLIENTS:
        usage("unknown client %r" % client)
    try:
        status, body = CLIENTS[client](url, headers)
    except Exception as error:  # noqa: BLE001 - every failure becomes the one JSON line
        print(json.dumps({"error": describe(error)}), flush=True)
        return 1
    print(json.dumps({"status": status, "body": body}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
