/** Test instruments: a wrapper around the real global fetch that records each attempt. */

export interface Attempt {
  method: string;
  url: string;
  headers: Record<string, string>;
  /** Whether the attempt carried an abort signal (the SDK's timeout). */
  hasSignal: boolean;
}

export function countingFetch(): { calls: Attempt[]; restore: () => void } {
  const real = globalThis.fetch;
  const calls: Attempt[] = [];
  globalThis.fetch = (input: string | URL | Request, init?: RequestInit) => {
    calls.push({
      method: init?.method ?? "GET",
      url: String(input),
      headers: { ...(init?.headers as Record<string, string> | undefined) },
      hasSignal: init?.signal instanceof AbortSignal,
    });
    return real(input, init);
  };
  return { calls, restore: () => void (globalThis.fetch = real) };
}
