// The device token: handed over by the app (from its backend's registration), refreshed by the
// SDK before it expires (POST /v1/devices/{id}/token), and given back to the app to keep
// (`onTokenRefreshed`: a secure store such as the Keychain, not AsyncStorage).
import { VicinoAuthError, type VicinoError } from "./errors.js";

export interface DeviceToken {
  token: string;
  /** epoch milliseconds */
  expiresAt: number;
}

export interface CredentialsOptions {
  /** refresh once the token has less than this left (default 7 days of its 30) */
  refreshBeforeMs?: number;
  /** a failed refresh (network, 5xx) is tried again after this long; the current token serves meanwhile */
  refreshRetryMs?: number;
  onTokenRefreshed?: (token: DeviceToken) => void | Promise<void>;
  now?: () => number;
}

export class Credentials {
  private current: DeviceToken;
  private refreshing?: Promise<void>;
  private notBefore = 0;
  private readonly refreshBeforeMs: number;
  private readonly refreshRetryMs: number;
  private readonly now: () => number;
  /** the last refusal of this token (by a refresh or a call); cleared by `set()` */
  refused?: VicinoAuthError;
  /** the last failed refresh (not a refusal), for diagnostics */
  lastRefreshError?: VicinoError;

  constructor(initial: DeviceToken, private readonly refresh: (current: string) => Promise<DeviceToken>,
              private readonly options: CredentialsOptions = {}) {
    this.current = { ...initial };
    this.refreshBeforeMs = options.refreshBeforeMs ?? 7 * 86_400_000;
    this.refreshRetryMs = options.refreshRetryMs ?? 60_000;
    this.now = options.now ?? Date.now;
  }

  get token(): DeviceToken {
    return { ...this.current };
  }

  /** A token from elsewhere (the app registered the device again). */
  set(token: DeviceToken): void {
    this.current = { ...token };
    this.refused = undefined;
    this.notBefore = 0;
  }

  /**
   * The token to send now, refreshed first when due (one refresh at a time). A refresh that fails
   * leaves the current token in use: it still works until it expires (or, once a refresh got
   * through but its answer was lost, until the server's grace period ends); if the server then
   * refuses it, the call that used it says so with a VicinoAuthError.
   */
  async bearer(): Promise<string> {
    const now = this.now();
    // an expired token cannot refresh (the server says to register again): the call will say so
    const due = now >= this.current.expiresAt - this.refreshBeforeMs && now < this.current.expiresAt;
    if (due && now >= this.notBefore) {
      await this.refreshNow().catch(() => undefined);
    }
    return this.current.token;
  }

  /** Refreshes now (joins a refresh under way); a refusal is a VicinoAuthError. */
  refreshNow(): Promise<void> {
    this.refreshing ??= (async () => {
      const used = this.current.token;
      try {
        const fresh = await this.refresh(used);
        if (this.current.token === used) { // not replaced by set() meanwhile
          this.current = fresh;
          this.lastRefreshError = undefined;
          await this.options.onTokenRefreshed?.({ ...fresh });
        }
      } catch (e) {
        if (e instanceof VicinoAuthError) {
          // this token may not refresh (expired, already refreshed, revoked): no point asking again
          this.refused = e;
          this.notBefore = Infinity;
        } else {
          this.lastRefreshError = e as VicinoError;
          this.notBefore = this.now() + this.refreshRetryMs;
        }
        throw e;
      }
    })().finally(() => { this.refreshing = undefined; });
    return this.refreshing;
  }
}
