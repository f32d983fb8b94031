// One HTTPS GET with undici's fetch in its default configuration, for the end-to-end tests:
// the proxy comes from the environment through EnvHttpProxyAgent (HTTPS_PROXY, NO_PROXY, ...),
// trust from NODE_EXTRA_CA_CERTS (read by Node at start-up), as in unmodified user code.
//
// usage: node https_get.mjs URL [-H 'Name: value']...
//
// Prints one JSON line: {"status": <int>, "body": "<text>"} on any HTTP answer (exit 0), or
// {"error": "<type>: <message>"} on an exception (exit 1). Timeout 15 s.
import { fetch, EnvHttpProxyAgent } from 'undici';

const TIMEOUT_MS = 15000;
const USAGE = "usage: node https_get.mjs URL [-H 'Name: value']...";

function parse(argv) {
  if (argv.length < 1) {
    console.error(USAGE);
    process.exit(2);
  }
  const [url, ...rest] = argv;
  const headers = [];
  while (rest.length) {
    const [flag, header] = rest.splice(0, 2);
    const colon = header === undefined ? -1 : header.indexOf(':');
    if (flag !== '-H' || colon < 0) {
      console.error(`bad arguments: ${JSON.stringify([flag, header])}\n${USAGE}`);
      process.exit(2);
    }
    headers.push([header.slice(0, colon).trim(), header.slice(colon + 1).trim()]);
  }
  return { url, headers };
}

// The one-line error text: the error and its causes (undici's "fetch failed" says little alone).
function describe(error) {
  const parts = [];
  for (let e = error; e && parts.length < 4; e = e.cause) {
    const code = e.code ? ` (${e.code})` : '';
    parts.push(e instanceof Error ? `${e.name}: ${e.message}${code}` : String(e));
  }
  return parts.join(' <- ');
}

const { url, headers } = parse(process.argv.slice(2));
try {
  const response = await fetch(url, {
    headers,
    dispatcher: new EnvHttpProxyAgent(),
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  const body = await response.text();
  process.stdout.write(JSON.stringify({ status: response.status, body }) + '\n');
  process.exit(0);
} catch (error) {
  process.stdout.write(JSON.stringify({ error: describe(error) }) + '\n');
  process.exit(1);
}
