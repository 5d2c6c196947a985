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
  /** the last refusal of this token; cleared by `set()` */
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

  /** The token to send now, refreshed first when due (one refresh at a time). */
  async bearer(): Promise<string> {
    const now = this.now();
    if (now >= this.current.expiresAt - this.refreshBeforeMs && now >= this.notBefore) {
      try {
        await this.refreshNow();
      } catch (e) {
        if (e instanceof VicinoAuthError) throw e;
        // a refresh that did not get through: the current token still works until it expires
      }
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
        if (e instanceof VicinoAuthError) this.refused = e;
        else this.lastRefreshError = e as VicinoError;
        this.notBefore = this.now() + this.refreshRetryMs;
        throw e;
      }
    })().finally(() => { this.refreshing = undefined; });
    return this.refreshing;
  }
}
