// The SDK's errors, a small closed tree the app can switch on:
//
//   VicinoError                  anything the SDK raises
//   ├── VicinoNetworkError       no answer (offline, timeout, connection cut): the server may or
//   │                            may not have processed the request (resending fixes is harmless)
//   └── VicinoHttpError          an answer with a 4xx/5xx status and its problem+json body
//       └── VicinoAuthError      401/403: stop and act (`reason` says how); retrying cannot help

/** RFC 9457 problem details, as every Vicino service answers an error. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  /** one entry per invalid field, e.g. `{field: "fixes[3].ts", message: "..."}` */
  errors?: { field?: string; message?: string }[];
  [key: string]: unknown;
}

export class VicinoError extends Error {
  override name = "VicinoError";
}

export class VicinoNetworkError extends VicinoError {
  override name = "VicinoNetworkError";
  constructor(
    message: string,
    readonly operation: string,
    override readonly cause: unknown,
    /** the request timed out (the SDK aborted it) rather than failing to connect */
    readonly timedOut: boolean,
  ) {
    super(message);
  }
}

export class VicinoHttpError extends VicinoError {
  override name = "VicinoHttpError";
  constructor(
    readonly operation: string,
    readonly status: number,
    readonly problem: Problem,
    /** from `Retry-After` (seconds or an HTTP date), when the server sent one */
    readonly retryAfterMs?: number,
  ) {
    super(`${operation}: ${status} ${problem.detail ?? problem.title ?? ""}`.trim());
  }
}

/**
 * What the app should do about a refused token:
 * - `token_expired`: the device token's 30 days ran out: register the device again (app backend);
 * - `revoked`: the device was registered again (this token was replaced) or removed (logout, or
 *   the app backend deleted it): register again, or stay signed out;
 * - `invalid`: not a token of this deployment (malformed, wrong signature, missing);
 * - `forbidden` (403): the token is valid but may not do this (another device's or customer's data).
 */
export type AuthFailure = "token_expired" | "revoked" | "invalid" | "forbidden";

export class VicinoAuthError extends VicinoHttpError {
  override name = "VicinoAuthError";
  constructor(operation: string, status: number, problem: Problem, readonly reason: AuthFailure) {
    super(operation, status, problem);
  }
}

/**
 * The reason behind a 401/403 (or a 404 for the device itself: it was removed), else undefined.
 * The services say it in `detail`; these words are their contract (tests/e2e/test_sdk.py runs
 * the SDK against the real services).
 */
export function authFailure(status: number, detail: string | undefined, deviceGone = false): AuthFailure | undefined {
  if (status === 403) return "forbidden";
  if (status === 404 && deviceGone) return "revoked";
  if (status !== 401) return undefined;
  const d = (detail ?? "").toLowerCase();
  if (d.includes("expired")) return "token_expired";
  if (/replaced|revoked|removed|unregistered|not registered|already refreshed/.test(d)) return "revoked";
  return "invalid";
}
