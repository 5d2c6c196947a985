// The real stack the integration tests run against, started by tests/e2e/test_sdk.py (`vicino up`
// on free ports, empty), which passes its URL and keys in the environment.
import assert from "node:assert/strict";

export interface Stack {
  /** the front door: every public route */
  baseUrl: string;
  appBackendKey: string;
  operatorKey: string;
  supportKey: string;
  /** a device token of this deployment whose time ran out */
  expiredToken: string;
  /** the test's fault controller: POST /redis/outage?seconds=N stops the stack's Redis for N s */
  faultsUrl: string;
}

const NAMES: Record<keyof Stack, string> = {
  baseUrl: "VICINO_SDK_BASE_URL", appBackendKey: "VICINO_SDK_APP_BACKEND_KEY", operatorKey: "VICINO_SDK_OPERATOR_KEY",
  supportKey: "VICINO_SDK_SUPPORT_KEY", expiredToken: "VICINO_SDK_EXPIRED_TOKEN", faultsUrl: "VICINO_SDK_FAULTS_URL",
};

export function stackFromEnv(): Stack {
  const missing = Object.values(NAMES).filter((n) => !process.env[n]);
  assert.deepEqual(missing, [], `${missing.join(", ")} unset: the integration tests run against a real stack; ` +
    "run them through `.venv/bin/python -m pytest tests/e2e/test_sdk.py` (it starts `vicino up`), or " +
    "`npm run test:unit` for the unit tests alone");
  return Object.fromEntries(Object.entries(NAMES).map(([k, n]) => [k, process.env[n]!])) as unknown as Stack;
}

/** A plain authenticated request (what an operator's tool or a support desk does, not the SDK). */
export async function api(stack: Stack, key: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(stack.baseUrl + path, {
    method, headers: { Authorization: `Bearer ${key}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

export async function putStore(stack: Stack, storeId: string, lat: number, lon: number, radiusM = 50): Promise<void> {
  const r = await api(stack, stack.operatorKey, "PUT", `/v1/stores/${storeId}`, {
    type: "Feature", id: storeId, properties: { name: storeId, radius_m: radiusM },
    geometry: { type: "Point", coordinates: [lon, lat] },
  });
  assert.ok(r.status === 200 || r.status === 201, JSON.stringify(r.body));
}

/** Redis away for `seconds`: resolves once it is down (the controller brings it back). */
export async function redisOutage(stack: Stack, seconds: number): Promise<void> {
  const r = await fetch(`${stack.faultsUrl}/redis/outage?seconds=${seconds}`, { method: "POST" });
  assert.equal(r.status, 200, await r.text());
}

export async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    assert.ok(Date.now() < deadline, `${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
