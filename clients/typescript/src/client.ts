// The app's client: one device, one base URL. Composes the transport, the device token, the fix
// queue and region sync, and the few calls an app makes besides reporting fixes.
import { Credentials, type DeviceToken } from "./credentials.js";
import { VicinoAuthError } from "./errors.js";
import { type Fix, FixQueue, type FixQueueOptions, type FlushResult } from "./fix-queue.js";
import type {
  ConsentIn, ConsentOut, DeliveryOut, DeviceLocaleOut, FixIn, LocationResultOut, OperationKey, PushTokenOut,
} from "./generated/types.js";
import { type RegionSet, RegionSync, type RegionSyncOptions, type RegionsAnswer } from "./regions.js";
import { MemoryStorage, type KeyValueStorage } from "./storage.js";
import { instantMs } from "./times.js";
import { type CallOptions, Transport, type TransportOptions } from "./transport.js";

export interface VicinoClientOptions extends TransportOptions {
  deviceId: string;
  customerId: string;
  /** the device token and its expiry, from the app backend's registration (POST /v1/devices) */
  token: string;
  tokenExpiresAt: string | number | Date;
  /** where the queue and the regions are kept (default MemoryStorage); AsyncStorage on React Native */
  storage?: KeyValueStorage;
  fixes?: Omit<FixQueueOptions, "storage" | "key">;
  regions?: Omit<RegionSyncOptions, "storage" | "key" | "now">;
  /** refresh the device token once it has less than this left (default 7 days) */
  refreshBeforeMs?: number;
  /** a refreshed token: keep it (Keychain / Keystore) and hand it over at the next launch */
  onTokenRefreshed?: (token: DeviceToken) => void | Promise<void>;
  /** any call refused with 401/403: sign the user out, or register the device again */
  onAuthError?: (error: VicinoAuthError) => void;
}

export class VicinoClient {
  readonly deviceId: string;
  readonly customerId: string;
  readonly transport: Transport;
  readonly credentials: Credentials;
  readonly fixes: FixQueue;
  readonly regions: RegionSync;
  private readonly onAuthError?: (error: VicinoAuthError) => void;

  constructor(options: VicinoClientOptions) {
    this.deviceId = options.deviceId;
    this.customerId = options.customerId;
    this.onAuthError = options.onAuthError;
    this.transport = new Transport(options);
    const storage = options.storage ?? new MemoryStorage();
    const scope = `vicino.${encodeURIComponent(options.deviceId)}`;
    this.credentials = new Credentials({ token: options.token, expiresAt: instantMs(options.tokenExpiresAt) },
      (current) => this.requestToken(current),
      { refreshBeforeMs: options.refreshBeforeMs, onTokenRefreshed: options.onTokenRefreshed, now: this.transport.now });
    this.fixes = new FixQueue({ send: (fixes, deadline) => this.postLocations(fixes, deadline) },
      { ...options.fixes, storage, key: `${scope}.fixes` });
    this.regions = new RegionSync((lat, lon, limit) => this.fetchRegions(lat, lon, limit),
      { ...options.regions, storage, key: `${scope}.regions`, now: this.transport.now });
  }

  /** Starts the queue's timer (and sends what a previous run left). */
  start(): void {
    this.fixes.start();
  }

  stop(): void {
    this.fixes.stop();
  }

  /** Queues fixes; persisted when the promise resolves. See FixQueue.add. */
  addFix(fix: Fix | Fix[]): Promise<number> {
    return this.fixes.add(fix);
  }

  /** Sends every queued fix now. See FixQueue.flush. */
  flush(options: { deadline?: number } = {}): Promise<FlushResult> {
    return this.fixes.flush(options);
  }

  /** A new device token (the app backend registered the device again): the queue goes on with it. */
  setToken(token: string, expiresAt: string | number | Date): void {
    this.credentials.set({ token, expiresAt: instantMs(expiresAt) });
    this.fixes.resume();
  }

  /** Refreshes the device token now (the SDK also does it by itself before it expires). */
  async refreshToken(): Promise<DeviceToken> {
    await this.guard(this.credentials.refreshNow());
    return this.credentials.token;
  }

  /** The nearest stores' regions around (lat, lon) and the resync radius (GET .../regions). */
  fetchRegions(lat: number, lon: number, limit = this.regions.limit): Promise<RegionsAnswer> {
    return this.device("GET /v1/devices/{device_id}/regions", {
      path: { device_id: this.deviceId }, query: { lat, lon, limit } });
  }

  /** Region sync on a location from the OS: asks only when it must; the new set, else undefined. */
  syncRegions(lat: number, lon: number): Promise<RegionSet | undefined> {
    return this.regions.update(lat, lon);
  }

  /**
   * FCM or APNs handed the app a new push token (the device token stays). A token that is not one
   * of the device's platform is a VicinoHttpError 422.
   */
  updatePushToken(pushToken: string): Promise<PushTokenOut> {
    // 409: the device was registered again or removed meanwhile: retried (then a refusal says which)
    return this.device("PUT /v1/devices/{device_id}/push-token", {
      path: { device_id: this.deviceId }, body: { push_token: pushToken }, retryAlso: [409] });
  }

  /**
   * The user switched the phone's language: `locale` is a BCP 47 tag (`it-IT`, `en-GB`; null forgets
   * it) that picks the language of campaign pushes. Stored canonical (the answer says how); a tag
   * the server cannot read is a VicinoHttpError 422. The device token stays.
   */
  updateLocale(locale: string | null): Promise<DeviceLocaleOut> {
    // 409: the device was registered again or removed meanwhile: retried (then a refusal says which)
    return this.device("PUT /v1/devices/{device_id}/locale", {
      path: { device_id: this.deviceId }, body: { locale }, retryAlso: [409] });
  }

  getConsent(): Promise<ConsentOut> {
    return this.device("GET /v1/customers/{customer_id}/consent", { path: { customer_id: this.customerId } });
  }

  /** The consent screen's answer (location, marketing, personalisation), kept with an audit trail. */
  setConsent(consent: ConsentIn): Promise<ConsentOut> {
    return this.device("PUT /v1/customers/{customer_id}/consent", {
      path: { customer_id: this.customerId }, body: consent });
  }

  /**
   * The user opened a push: its data carries `delivery_id`. Idempotent on the server, so it is
   * retried through network errors and 503 (the recommender away: the open is kept); a 409 means
   * the push was never sent.
   */
  reportOpened(deliveryId: string): Promise<DeliveryOut> {
    return this.device("POST /v1/deliveries/{delivery_id}/opened", { path: { delivery_id: deliveryId } });
  }

  /**
   * The user signs out: queued fixes are sent first (until `deadline`, default 10 s from now; what
   * is left is dropped), then the device is removed with its own token (its visits end, its tokens
   * stop; retried until 10 s after `deadline`), and the queue and regions are forgotten on the
   * phone in any case. A device already removed counts as done. Rejects when the server could not
   * be told (offline): the app's backend can remove the device (DELETE /v1/devices/{id}).
   */
  async logout(options: { sendQueued?: boolean; deadline?: number } = {}): Promise<void> {
    this.stop();
    const deadline = options.deadline ?? this.transport.now() + 10_000;
    try {
      if (options.sendQueued ?? true) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<void>((resolve) => { timer = setTimeout(resolve, Math.max(0, deadline - this.transport.now())); });
        // a flush under way (the timer's) has no deadline of its own: stop waiting for it at ours
        await Promise.race([this.fixes.flush({ deadline }).catch(() => undefined), late]);
        clearTimeout(timer);
      }
      await this.transport.call("DELETE /v1/devices/{device_id}", {
        path: { device_id: this.deviceId }, authorization: () => this.credentials.token.token, deviceScoped: true,
        deadline: deadline + 10_000 });
    } catch (e) {
      if (!(e instanceof VicinoAuthError && e.reason === "revoked")) throw e;
    } finally {
      await this.fixes.clear();
      await this.regions.clear();
    }
  }

  // --- internals -------------------------------------------------------------------------

  private postLocations(fixes: FixIn[], deadline?: number): Promise<LocationResultOut> {
    // safe to resend: the server ignores fixes it has processed (duplicate, out_of_order);
    // 409: too many concurrent reports of this device, retry
    return this.device("POST /v1/locations", {
      body: { device_id: this.deviceId, fixes }, deadline, retryAlso: [409] });
  }

  private async requestToken(current: string): Promise<DeviceToken> {
    const answer = await this.transport.call("POST /v1/devices/{device_id}/token", {
      path: { device_id: this.deviceId }, authorization: () => current, deviceScoped: true });
    return { token: answer.token, expiresAt: instantMs(answer.token_expires_at) };
  }

  /** A call with the device token (refreshed when due); a refusal reaches `onAuthError`. */
  private device<K extends OperationKey>(operation: K, options: CallOptions<K>) {
    return this.guard(this.transport.call(operation, {
      ...options, authorization: () => this.credentials.bearer(), deviceScoped: true }));
  }

  private async guard<T>(call: Promise<T>): Promise<T> {
    try {
      return await call;
    } catch (e) {
      if (e instanceof VicinoAuthError) {
        if (e.reason !== "forbidden") this.credentials.refused = e;
        this.onAuthError?.(e);
      }
      throw e;
    }
  }
}

