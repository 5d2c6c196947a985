// For the retailer's app server only (Node): the calls made with an `app_backend` API key,
// server to server. The key must never ship inside an app: whoever holds it can register devices
// for any customer.
import type { ConsentIn, ConsentOut, DeviceIn, DeviceOut } from "./generated/types.js";
import { Transport, type TransportOptions } from "./transport.js";

export interface AppBackendOptions extends TransportOptions {
  /** an API key with the `app_backend` role (`vicino keys create NAME --role app_backend`) */
  apiKey: string;
}

export class VicinoAppBackend {
  readonly transport: Transport;
  private readonly apiKey: string;

  constructor(options: AppBackendOptions) {
    this.transport = new Transport(options);
    this.apiKey = options.apiKey;
  }

  /**
   * Registers the signed-in customer's device; answers the device token to hand to the app.
   * Registering a device again rotates its token (the old one stops at once) and its push token.
   * Send the device's `locale` (BCP 47, e.g. `it-IT`): it picks the language of campaign pushes.
   */
  registerDevice(device: DeviceIn): Promise<DeviceOut> {
    return this.transport.call("POST /v1/devices", { body: device, authorization: () => this.apiKey });
  }

  /** Removes a device (the customer signed out elsewhere, closed the account): its token stops. */
  async deleteDevice(deviceId: string): Promise<void> {
    await this.transport.call("DELETE /v1/devices/{device_id}", {
      path: { device_id: deviceId }, authorization: () => this.apiKey });
  }

  setConsent(customerId: string, consent: ConsentIn): Promise<ConsentOut> {
    return this.transport.call("PUT /v1/customers/{customer_id}/consent", {
      path: { customer_id: customerId }, body: consent, authorization: () => this.apiKey });
  }

  getConsent(customerId: string): Promise<ConsentOut> {
    return this.transport.call("GET /v1/customers/{customer_id}/consent", {
      path: { customer_id: customerId }, authorization: () => this.apiKey });
  }
}
